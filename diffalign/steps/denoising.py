"""The denoising step (Diffusion-DPO, MaPO, DCPO, RankDPO, SFT): forward-noise each group once,
with one noise and one time shared by its ``K`` images, then the errors of policy and reference."""

from __future__ import annotations

from diffalign.objectives.base import PreferenceTerms
from diffalign.steps.base import PreferenceStep


class DenoisingStep(PreferenceStep):
    """``x_t = add_noise(x0, ε, t)`` per group; terms = denoising errors at ``x_t``.

    ``reference_table``: the reference's errors computed once before training
    (:mod:`diffalign.training.reference_pass`), looked up by each group's generator instead of
    running the reference; ``None``: the reference runs in every step."""

    name = "denoising"
    reference_table = None

    def __call__(self, model, batch: dict, generator) -> PreferenceTerms:
        latents, cond = self.inputs(batch, generator)
        noise, t = self.family.sample_noise_and_time(latents, generator=generator)
        known = None if self.reference_table is None else self.reference_table.lookup(generator, latents.device)
        return self.errors(model, batch, latents, cond, noise, t, ref_err=known)

    def reference_errors(self, batch: dict, generator):
        """``[B, K]`` the reference's errors of ``batch``, exactly as :meth:`__call__` computes them."""
        latents, cond = self.inputs(batch, generator)
        noise, t = self.family.sample_noise_and_time(latents, generator=generator)
        with self.reference.active() as reference:
            return self.family.denoising_error(reference, latents, cond, noise, t)
