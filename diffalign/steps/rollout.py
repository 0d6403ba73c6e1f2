"""What the sampling steps (SPO, Diffusion-DRO) share: prompts → conditioning at the batch's
resolution, start noise per group, the time the rollouts take, and the last rollout's images.

A rollout step samples from the policy inside the training step (no gradient through the chain,
:mod:`diffalign.solver`), then makes its terms from what it sampled. Each process rolls out its
own batch's prompts, so rollouts are split across processes like the data.

Through the step hooks (:class:`~diffalign.steps.base.PreferenceStep`), the trainer logs the
seconds spent rolling out and training (:meth:`RolloutStep.log_values`), the step's own metrics,
and saves the last rollout's images (:meth:`RolloutStep.preview_images`) at the validation
interval; the start-up checks learn that no latent cache serves a rollout
(:meth:`RolloutStep.cache_problem`).
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch
from torch import Tensor

from diffalign.steps.base import PreferenceStep

PARTS = ("rollout", "scoring", "train")
"""What a sampling step's seconds are split into: sampling (and decoding), the rewards' scoring
(the online steps'), and the terms' forwards; the backward and the optimiser are the rest."""

GRID_IMAGES = 8
"""Images of the last rollout kept for the grid the trainer saves."""


class RolloutStep(PreferenceStep):
    """Base class of the steps that sample from the policy while training."""

    parts: tuple[str, ...] = ("rollout", "train")
    """The parts of :data:`PARTS` this step times (the online steps add ``scoring``)."""

    def __init__(self, family, objective, reference, group_size: int, settings=None, **options):
        super().__init__(family, objective, reference, group_size, settings, **options)
        if reference is None and objective.needs_reference:
            raise ValueError(f"{objective.name} needs the reference model")
        self.timing = dict.fromkeys(self.parts, 0.0)
        self.totals = dict.fromkeys(self.parts, 0.0)
        """Seconds of each part over the whole run (``timing`` is reset at every log)."""
        self._open: list[str] = []  # the parts being timed, innermost last
        self._metrics: dict[str, Tensor] = {}
        self._last_latents: Tensor | None = None

    @contextmanager
    def timed(self, part: str):
        """Add the wall time of the block to ``timing[part]`` (after the device's queue drains,
        so GPU work is counted where it was queued). A block timed inside another counts for its
        own part only: scoring inside a collection is not also rollout time."""
        start = time.perf_counter()
        self._open.append(part)
        try:
            yield
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            self._open.pop()
            for name, add in ((part, seconds), *(((self._open[-1], -seconds),) if self._open else ())):
                self.timing[name] += add
                self.totals[name] += add

    @classmethod
    def cache_problem(cls, objective, settings) -> str | None:
        return (f"{objective.name} samples from the policy while it trains, which needs the VAE and text encoders "
                "loaded anyway")

    def log_values(self) -> dict[str, float]:
        """Seconds of each of the step's parts since the last call (``time/rollout_s``,
        ``time/scoring_s`` for the online steps, ``time/train_s``); the trainer adds them up between
        its log lines."""
        seconds, self.timing = self.timing, dict.fromkeys(self.parts, 0.0)
        return {f"time/{part}_s": value for part, value in seconds.items()}

    def metrics(self) -> dict[str, Tensor]:
        return dict(self._metrics)

    def conditioning(self, batch: dict, images_per_prompt: int = 1):
        """``(cond, uncond)`` ``[B, images_per_prompt, ...]`` for the batch's prompts at its
        resolution; ``uncond`` (the empty prompt) only when the step guides."""
        size = self.image_size(batch)
        b = len(batch["prompts"])
        info = {key: torch.tensor(size, dtype=torch.float32).expand(b, images_per_prompt, 2)
                for key in ("original_size", "target_size")}  # SDXL's micro-conditioning; others ignore it
        cond = self.family.encode_prompts(list(batch["prompts"]), group_size=images_per_prompt, image_info=info)
        return cond, self.unconditional(batch, images_per_prompt, info)

    def unconditional(self, batch: dict, images_per_prompt: int = 1, image_info: dict | None = None):
        """The empty prompt's conditioning ``[B, images_per_prompt, ...]`` when the step guides
        (``rollout.guidance != 1``), else ``None``."""
        if self.config.guidance == 1:
            return None
        return self.family.encode_prompts([""] * len(batch["prompts"]), group_size=images_per_prompt,
                                          image_info=image_info)

    def image_size(self, batch: dict) -> tuple[int, int]:
        """``(H, W)`` in pixels of the batch's images: the rollouts are made at that size."""
        if "pixels" in batch:
            return tuple(batch["pixels"].shape[-2:])
        return tuple(side * self.family.vae_scale_factor for side in batch["latent_mean"].shape[-2:])

    def start_noise(self, batch: dict, generator, images_per_prompt: int = 1) -> Tensor:
        """``[B, images_per_prompt, C, h, w]`` N(0, I) start latents, one draw per group's generator."""
        from diffalign.solver import initial_noise

        # A video family's rollouts are clips as long as the batch's (rollout steps train uncached).
        frames = batch["pixels"].shape[-3] if self.family.media == "video" else None
        return initial_noise(self.family, len(batch["prompts"]), images_per_prompt, self.image_size(batch),
                             generator=generator, frames=frames)

    def keep_images(self, latents: Tensor) -> None:
        """Keep up to :data:`GRID_IMAGES` latents ``[N, *latent]`` of this rollout for its grid."""
        self._last_latents = latents[:GRID_IMAGES].detach()

    def preview_images(self) -> Tensor | None:
        """The last rollout's kept latents decoded, ``[n, 3, H, W]`` in [0, 1] on the CPU (a clip's
        first frame for a video family; ``None``
        before the first rollout or without a VAE). Decoded only when asked: the trainer asks at
        the validation interval."""
        if self._last_latents is None or getattr(self.family.pipe, "vae", None) is None:
            return None
        pixels = self.family.decode(self._last_latents)
        if self.family.media == "video":
            pixels = pixels[:, :, 0]  # [n, 3, F, H, W]: each clip's first frame in the grid
        return (pixels.float() / 2 + 0.5).clamp(0, 1).cpu()


__all__ = ["GRID_IMAGES", "PARTS", "RolloutStep"]
