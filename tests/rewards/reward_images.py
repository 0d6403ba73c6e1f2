"""Small images for the reward-model tests (imported by the tests and their conftest)."""

import io

import numpy as np
import torch
from PIL import Image


def smooth_images(count: int, height: int = 48, width: int = 40, seed: int = 0) -> list[Image.Image]:
    """``count`` RGB images of smooth random colour fields, from dark to bright (so that even toy
    models score them clearly apart), non-square by default."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 4, 4, generator=generator) * torch.linspace(0.3, 1.0, count).view(-1, 1, 1, 1)
    fields = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    arrays = (fields.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arrays]


def as_tensor(images: list[Image.Image]) -> torch.Tensor:
    """``[B, 3, H, W]`` in [0, 1] holding exactly the PIL images' pixel values."""
    return torch.stack([torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255 for im in images])


def clip_normalise(pixels: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP normalisation, written out here so tests do not lean on the code under test."""
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], dtype=pixels.dtype).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711], dtype=pixels.dtype).view(1, 3, 1, 1)
    return (pixels - mean) / std


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
