"""The generator pipelines of the synthetic builder (:mod:`diffalign.builders.synthetic`): loaded
once, drawing seeded images (or videos) in batches, and where a resumed build starts drawing again.
"""

from __future__ import annotations

from typing import Sequence

from diffalign.data.writer import BuildError


class Generators:
    """The ``M`` generator pipelines, loaded once, drawing seeded images (or videos) in batches.

    Args:
        paths: diffusers pipeline folders or hub ids, all of one media (images or videos).
        device, dtype: where and in what precision they run.
        steps, guidance_scale, height, width: the sampling options (``None``: the pipeline's default).
        frames: text-to-video generators' clip length (Wan: 1 + 4n); ``None`` for images.
    """

    def __init__(self, paths: Sequence[str], device, dtype, steps: int, guidance_scale: float | None,
                 height: int | None, width: int | None, frames: int | None = None):
        from diffusers import DiffusionPipeline

        from diffalign.families.pipelines import media_of

        self.paths = [str(p) for p in paths]
        self.device = device
        self.frames = frames
        self.pipes = []
        for path in self.paths:
            pipe = DiffusionPipeline.from_pretrained(path, dtype=dtype).to(device)
            pipe.set_progress_bar_config(disable=True)
            self.pipes.append(pipe)
        media = {media_of(pipe) for pipe in self.pipes}
        if media != {"video" if frames else "image"}:
            raise BuildError(f"the generators make {' and '.join(sorted(media))}s; "
                             + ("--frames is for text-to-video generators" if frames else
                                "give --frames for text-to-video generators (all generators must make the same media)"))
        self.call = {"num_inference_steps": steps}
        for key, value in (("guidance_scale", guidance_scale), ("height", height), ("width", width)):
            if value is not None:
                self.call[key] = value

    def draw(self, which: int, prompts: list[str], seeds: list[int], batch_size: int) -> list:
        """Images (or videos) of generator ``which``, one per ``(prompt, seed)``, in calls of ``batch_size``."""
        import torch

        from diffalign.families.pipelines import generate

        out = []
        for start in range(0, len(prompts), batch_size):
            chunk = slice(start, start + batch_size)
            # CPU generators: the same seed gives the same initial noise on any GPU or none.
            rngs = [torch.Generator("cpu").manual_seed(s) for s in seeds[chunk]]
            out += generate(self.pipes[which], prompts[chunk], rngs, frames=self.frames, **self.call)
        return out


def prompts_per_call(batch_size: int, images_per_prompt: int) -> int:
    """How many prompts one pipeline call takes: each call draws at most ``batch_size`` images."""
    return max(1, batch_size // images_per_prompt)


def resume_point(position: int, batch_size: int, images_per_prompt: int) -> tuple[int, int]:
    """``(start, skip)``: where a build that kept ``position`` rows starts generating again, and how
    many of the rows it makes first were kept already. It starts at the first prompt of the call
    that ``position`` falls in, so every call holds the prompts it held in an uninterrupted build:
    float32 kernels round a batch by its size, so a call of other prompts would draw other pixels."""
    start = position - position % prompts_per_call(batch_size, images_per_prompt)
    return start, position - start

