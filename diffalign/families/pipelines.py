"""Calling a loaded diffusers pipeline of any family for samples: images or videos.

The image pipelines return PIL images in ``.images``; ``WanPipeline`` takes ``num_frames`` and
returns ``.frames``. Validation, evaluation and the synthetic builder call :func:`generate` and
get one list either way, so none of them needs to know which family made it.
"""

from __future__ import annotations

from typing import Sequence

import torch

from diffalign.families.base import FamilyError


def family_of(pipe):
    """The family class that wraps ``pipe``'s pipeline class, or ``None``."""
    from diffalign.families import FAMILIES

    return next((cls for cls in FAMILIES.values() if cls.pipeline_class == type(pipe).__name__), None)


def media_of(pipe) -> str:
    """``"video"`` for a text-to-video pipeline (one a video family wraps), else ``"image"``."""
    family = family_of(pipe)
    return family.media if family is not None else "image"


@torch.no_grad()
def generate(pipe, prompts: Sequence[str], generators, *, frames: int | None = None, **options) -> list:
    """Samples of ``pipe`` for ``prompts``, one per prompt.

    Args:
        generators: one ``torch.Generator`` per prompt (or one for all).
        frames: a video pipeline's clip length (Wan: 1 + 4n); ``None`` for image pipelines.
        options: the pipeline's own sampling options (``num_inference_steps``, ``guidance_scale``,
            ``height``, ``width``, ``negative_prompt``, ...).

    Returns:
        PIL images, or for a video pipeline uint8 tensors ``[F, 3, H, W]`` on the CPU.
    """
    if media_of(pipe) == "image":
        if frames is not None:
            raise FamilyError(f"frames={frames} was given for {type(pipe).__name__}, which makes images")
        return list(pipe(prompt=list(prompts), generator=generators, **options).images)
    if frames is None:
        raise FamilyError(f"{type(pipe).__name__} makes videos: give the number of frames (e.g. 81, Wan 2.1's 5 s)")
    why = family_of(pipe).clip_problem(frames)
    if why:
        raise FamilyError(why)
    videos = pipe(prompt=list(prompts), generator=generators, num_frames=frames, output_type="pt", **options).frames
    # [B, F, 3, H, W] in [0, 1] (diffusers' VideoProcessor) → uint8, the form video files store.
    return [(video.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu() for video in videos]
