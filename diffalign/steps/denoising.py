"""The denoising step (Diffusion-DPO, MaPO, DCPO, RankDPO, SFT): forward-noise each group once,
with one noise and one time shared by its ``K`` images, then the errors of policy and reference."""

from __future__ import annotations

from diffalign.objectives.base import PreferenceTerms
from diffalign.steps.base import PreferenceStep


class DenoisingStep(PreferenceStep):
    """``x_t = add_noise(x0, ε, t)`` per group; terms = denoising errors at ``x_t``."""

    name = "denoising"

    def __call__(self, model, batch: dict, generator) -> PreferenceTerms:
        latents, cond = self.inputs(batch, generator)
        noise, t = self.family.sample_noise_and_time(latents, generator=generator)
        return self.errors(model, batch, latents, cond, noise, t)
