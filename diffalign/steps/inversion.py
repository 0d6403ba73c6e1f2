"""The inversion step (InPO, SmPO): each image's latent is inverted towards its group's sampled
``t`` (:func:`diffalign.inversion.invert`: where the official grid leaves it, or exactly onto t),
and the model is told ``t`` and its errors are taken against the noise the inverted latent
implies at ``t``, ``τ = (x̃ − a_t·x0)/s_t``, as the official code builds its target.

Since ``add_noise(x0, τ, t) = x̃``, the errors are the family's ``denoising_error`` with ``τ`` as
the noise, in the family's own parameterisation (ε, v or flow velocity).
"""

from __future__ import annotations

import torch

from diffalign.inversion import InversionConfig, invert
from diffalign.objectives.base import PreferenceTerms
from diffalign.steps.base import PreferenceStep


class InversionStep(PreferenceStep):
    """Settings: the config's ``inversion:`` block (:class:`~diffalign.inversion.InversionConfig`)."""

    name = "inversion"

    def __init__(self, family, objective, reference, group_size: int, settings=None, **options):
        super().__init__(family, objective, reference, group_size, settings or InversionConfig(), **options)
        if self.config.model == "reference" and reference is None:
            raise ValueError(f"{objective.name}: inversion.model=reference needs the reference model")

    @classmethod
    def cache_problem(cls, objective, settings) -> str | None:
        guidance = settings.guidance
        if guidance != 1:
            return (f"inversion.guidance: {guidance} needs the text encoders for the empty prompt, "
                    "which a cached run leaves unloaded")
        return None

    def __call__(self, model, batch: dict, generator) -> PreferenceTerms:
        latents, cond = self.inputs(batch, generator)
        # The noise is drawn (and unused) so that t comes from the same draws as the denoising step's.
        _, t = self.family.sample_noise_and_time(latents, generator=generator)
        uncond = self._uncond(cond) if self.config.guidance != 1 else None
        noisy = self._invert(model, latents, cond, t, uncond, generator)
        noise = self.family.implied_noise(latents.float(), noisy, t).to(latents.dtype)
        return self.errors(model, batch, latents, cond, noise, t)

    def _invert(self, model, latents, cond, t, uncond, generator) -> torch.Tensor:
        if self.config.model == "reference":
            with self.reference.active() as reference:
                return invert(self.family, reference, latents, cond, t, self.config, uncond=uncond, generator=generator)
        return invert(self.family, model, latents, cond, t, self.config, uncond=uncond, generator=generator)

    def _uncond(self, cond):
        b, k = cond.group_shape
        return self.family.encode_prompts([""] * b, group_size=k)
