"""Image bytes: checking, decoding, and the resize / flip / crop of training.

The crop follows diffusers' SDXL training script: resize the shorter side to the resolution,
flip, then crop, and record the original size and the crop's top-left corner, which SDXL
receives as micro-conditioning time ids.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch
from PIL import Image, UnidentifiedImageError

# What PIL raises for bytes that are not a readable image (truncated files raise OSError).
IMAGE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def image_bytes(value) -> bytes | None:
    """The bytes of an image cell: raw bytes, or a ``{"bytes": ..., "path": ...}`` struct."""
    if isinstance(value, dict):
        return value.get("bytes")
    return value


def is_readable(data: bytes | None) -> bool:
    """True when PIL can decode the whole image (cheaply: JPEGs decode at 1/8 scale)."""
    if not data:
        return False
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (64, 64))
            image.load()
        return True
    except IMAGE_ERRORS:
        return False


def decode(data: bytes) -> Image.Image:
    """Decode to an RGB PIL image (raises one of :data:`IMAGE_ERRORS` when unreadable)."""
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


@dataclass
class Prepared:
    """One image ready for the model.

    Attributes:
        pixels: ``[3, R, R]`` in [-1, 1].
        original_size: ``(h, w)`` before resizing.
        crop_top_left: ``(top, left)`` of the crop in the resized (and flipped) image.
    """

    pixels: torch.Tensor
    original_size: tuple[int, int]
    crop_top_left: tuple[int, int]


def prepare(image: Image.Image, resolution: int, flip: bool, crop_fraction: tuple[float, float] | None) -> Prepared:
    """Resize the shorter side to ``resolution``, optionally flip, and crop a square.

    Args:
        image: RGB image.
        resolution: output side ``R``.
        flip: mirror left-right.
        crop_fraction: ``(fy, fx)`` in [0, 1] placing a random crop within the slack; ``None``
            crops the centre. A group shares one fraction, so same-sized images get the same crop.
    """
    import torchvision.transforms.functional as TF

    original = (image.height, image.width)
    tensor = TF.pil_to_tensor(image)
    tensor = TF.resize(tensor, resolution, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    if flip:
        tensor = TF.hflip(tensor)
    h, w = tensor.shape[-2:]
    if crop_fraction is None:
        top, left = max(0, round((h - resolution) / 2.0)), max(0, round((w - resolution) / 2.0))
    else:
        top, left = round(crop_fraction[0] * (h - resolution)), round(crop_fraction[1] * (w - resolution))
    tensor = TF.crop(tensor, top, left, resolution, resolution)
    pixels = tensor.float() / 127.5 - 1.0
    return Prepared(pixels, original, (top, left))
