"""Validation images: the pipeline with the current weights, fixed prompts and seed, one grid."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from diffalign.config import ValidationConfig


@torch.no_grad()
def sample_grid(family, config: ValidationConfig, resolution: int, path: Path) -> Path:
    """Sample one image per prompt and save them as a grid PNG at ``path``."""
    from torchvision.utils import save_image

    denoiser = family.denoiser
    was_training = denoiser.training
    denoiser.eval()
    try:
        generator = torch.Generator(device=family.device).manual_seed(config.seed)
        images = family.pipe(
            prompt=list(config.prompts), num_inference_steps=config.num_inference_steps,
            guidance_scale=config.guidance_scale, height=resolution, width=resolution,
            generator=generator, output_type="pt",
        ).images
    finally:
        denoiser.train(was_training)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.float().cpu(), str(path), nrow=math.ceil(math.sqrt(len(images))))
    return path
