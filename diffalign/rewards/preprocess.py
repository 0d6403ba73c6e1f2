"""Image preprocessing of the CLIP/BLIP reward models, for PIL images and for tensors.

Two geometries:

- ``fit="crop"`` (CLIP, PickScore, ImageReward, aesthetic): resize the *shortest* side to
  ``size`` with bicubic filtering, then crop the centre ``size × size``. The PIL path resizes the
  PIL image, as transformers' ``CLIPImageProcessor`` and torchvision's ``Resize`` on PIL images
  (OpenAI CLIP, ImageReward) do, so published numbers reproduce.
- ``fit="pad"`` (HPSv2, its ``ResizeMaxSize``): convert to a tensor, resize the *longest* side to
  ``size`` (bicubic, antialiased: torchvision's tensor resize), and pad with black to a centred
  square; an image whose longest side already is ``size`` is left alone. The official code does
  this on tensors, so the PIL and tensor paths are the same operations.

Then ``(x − mean) / std``. The tensor path uses ``torch.nn.functional.interpolate`` (bicubic,
antialias) so it is differentiable; against PIL's uint8 bicubic it differs by at most ≈ 3/255
per pixel (PIL rounds to uint8 between its two passes), see ``tests/rewards``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageTransform:
    """Resize + crop or pad + normalise to ``[B, 3, size, size]``.

    Attributes:
        size: output side ``S``.
        fit: ``"crop"`` (shortest side → S, centre crop) or ``"pad"`` (longest side → S, black pad).
        mean, std: per-channel normalisation (OpenAI CLIP's by default).
        crop_offset: how the centre crop rounds an odd slack: ``"floor"`` as transformers'
            ``center_crop``, ``"round"`` as torchvision's ``CenterCrop`` (OpenAI CLIP, ImageReward).
    """

    size: int = 224
    fit: Literal["crop", "pad"] = "crop"
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    crop_offset: Literal["floor", "round"] = "floor"

    def __post_init__(self):
        if self.fit not in ("crop", "pad"):
            raise ValueError(f"fit must be 'crop' or 'pad', got {self.fit!r}")
        if self.crop_offset not in ("floor", "round"):
            raise ValueError(f"crop_offset must be 'floor' or 'round', got {self.crop_offset!r}")

    def __call__(self, images) -> Tensor:
        """``[B, 3, S, S]`` normalised float32 pixels from PIL images or a ``[B, 3, H, W]`` tensor."""
        if isinstance(images, Tensor):
            pixels = self.geometry(images.float())
        else:
            pixels = torch.stack([self.pil_pixels(image) for image in images])
        return self.normalise(pixels)

    # ----------------------------------------------------------------------- pieces
    def normalise(self, pixels: Tensor) -> Tensor:
        mean = torch.tensor(self.mean, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
        return (pixels - mean) / std

    def geometry(self, pixels: Tensor) -> Tensor:
        """``[B, 3, H, W]`` → ``[B, 3, S, S]`` in torch (differentiable), before normalisation."""
        height, width = pixels.shape[-2:]
        if self.fit == "pad":
            return self._pad(pixels, height, width)
        resized = resized_shortest(height, width, self.size)
        if resized != (height, width):
            pixels = F.interpolate(pixels, size=resized, mode="bicubic", antialias=True, align_corners=False)
        top, left = self._crop_corner(*resized)
        return pixels[..., top : top + self.size, left : left + self.size]

    def pil_pixels(self, image) -> Tensor:
        """``[3, S, S]`` in [0, 1] from one PIL image: the reference path."""
        image = image.convert("RGB")
        if self.fit == "pad":  # HPSv2 converts to a tensor first and resizes the tensor
            return self.geometry(pil_to_tensor(image)[None])[0]
        height, width = resized_shortest(image.height, image.width, self.size)
        if (height, width) != (image.height, image.width):
            from PIL import Image

            image = image.resize((width, height), resample=Image.BICUBIC)
        top, left = self._crop_corner(height, width)
        image = image.crop((left, top, left + self.size, top + self.size))
        return pil_to_tensor(image)

    def _crop_corner(self, height: int, width: int) -> tuple[int, int]:
        if self.crop_offset == "floor":
            return (height - self.size) // 2, (width - self.size) // 2
        return int(round((height - self.size) / 2.0)), int(round((width - self.size) / 2.0))

    def _pad(self, pixels: Tensor, height: int, width: int) -> Tensor:
        scale = self.size / max(height, width)
        if scale == 1.0:
            return pixels
        resized = (round(height * scale), round(width * scale))
        pixels = F.interpolate(pixels, size=resized, mode="bicubic", antialias=True, align_corners=False)
        pad_h, pad_w = self.size - resized[0], self.size - resized[1]
        # F.pad takes (left, right, top, bottom); the odd pixel goes right/bottom, as in HPSv2.
        return F.pad(pixels, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)


def resized_shortest(height: int, width: int, size: int) -> tuple[int, int]:
    """``(h, w)`` with the shortest side ``size`` and the other truncated to an int, as both
    transformers and torchvision compute it."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def pil_to_tensor(image) -> Tensor:
    """``[3, H, W]`` float32 in [0, 1] from an RGB PIL image."""
    array = np.asarray(image, dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255.0


def transform_from_processor(config: dict, fit: str = "crop", crop_offset: str = "floor") -> ImageTransform:
    """An :class:`ImageTransform` from a transformers ``preprocessor_config.json`` dict.

    Reads ``crop_size`` (int or ``{"height", "width"}``), ``size`` (``{"shortest_edge"}`` or
    int), ``image_mean``/``image_std``; only the square shortest-edge-then-crop form is supported.
    """
    crop = _side(config.get("crop_size", 224))
    resize = _side(config.get("size", crop))
    if resize != crop:
        raise ValueError(f"preprocessor resizes to {resize} and crops {crop}; only resize == crop is supported")
    mean = tuple(config.get("image_mean", OPENAI_CLIP_MEAN))
    std = tuple(config.get("image_std", OPENAI_CLIP_STD))
    return ImageTransform(size=crop, fit=fit, mean=mean, std=std, crop_offset=crop_offset)


def _side(value: int | dict | Sequence[int]) -> int:
    if isinstance(value, dict):
        for key in ("shortest_edge", "height", "width"):
            if key in value:
                return int(value[key])
        raise ValueError(f"cannot read an image side from {value}")
    if isinstance(value, (list, tuple)):
        return int(value[0])
    return int(value)
