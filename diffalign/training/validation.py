"""Validation samples: the pipeline with the current weights, fixed prompts and seed, one grid
(a PNG of images, or an animated WebP of videos, frame by frame)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from diffalign.config import ValidationConfig


@torch.no_grad()
def sample_grid(family, config: ValidationConfig, resolution: int, path: Path, frames: int | None = None) -> Path:
    """Sample one image (or a ``frames``-frame video) per prompt and save them as a grid at
    ``path`` (``.webp`` in place of its suffix for videos). Returns the file written."""
    from torchvision.utils import make_grid, save_image

    from diffalign.families.pipelines import generate

    denoiser = family.denoiser
    was_training = denoiser.training
    denoiser.eval()
    try:
        generator = torch.Generator(device=family.device).manual_seed(config.seed)
        options = dict(num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
                       height=resolution, width=resolution)
        if family.media == "video":
            samples = generate(family.pipe, config.prompts, generator, frames=frames, **options)
        else:
            samples = family.pipe(prompt=list(config.prompts), generator=generator, output_type="pt", **options).images
    finally:
        denoiser.train(was_training)
    path.parent.mkdir(parents=True, exist_ok=True)
    nrow = math.ceil(math.sqrt(len(samples)))
    if family.media != "video":
        save_image(samples.float().cpu(), str(path), nrow=nrow)
        return path
    from diffalign.data.videos import encode_animation

    # One grid per frame index: frame f of every prompt's video side by side.
    grids = torch.stack([make_grid(torch.stack([v[f] for v in samples]).float(), nrow=nrow)
                         for f in range(samples[0].shape[0])]).round().to(torch.uint8)
    path = path.with_suffix(".webp")
    path.write_bytes(encode_animation(grids, fps=8, format="webp"))
    return path
