"""Rectified-flow maths shared by the flow-matching families (SD3/3.5, FLUX.1, FLUX.2, Qwen-Image, Wan).

With σ ∈ (0, 1] the noise level (our normalised time ``t`` is σ itself):
    x_σ = (1 − σ)·x0 + σ·ε,   target v = ε − x0,   denoiser timestep = σ · N.
Training σ are the N shifted sigmas of a ``FlowMatchEulerDiscreteScheduler`` with the
checkpoint's shift; ``u`` from ``compute_density_for_timestep_sampling`` picks one of them, as
diffusers' SD3 scripts do (a dynamically shifted scheduler, FLUX's and Qwen-Image's, stores them
unshifted). A family says where its shift lives (:meth:`FlowMatching.flow_shift`).
"""

from __future__ import annotations

from torch import Tensor

from diffalign.families.base import input_dtype
from diffalign.families.noise import per_group


class FlowMatching:
    """Mixin for a :class:`~diffalign.families.base.ModelFamily` trained by rectified flow."""

    prediction_type = "flow"
    loss_weightings = ("none", "sigma_sqrt", "cosmap")

    def _init_flow(self) -> None:
        # A fresh scheduler: sampling calls set_timesteps on pipe.scheduler, which rewrites its
        # sigmas; training must keep the N shifted training sigmas.
        self.train_sigmas = self._flow_scheduler().sigmas.float()

    def flow_shift(self) -> float:
        """The shift of the checkpoint's schedule, ``σ' = s·σ / (1 + (s − 1)·σ)``."""
        return float(self.pipe.scheduler.config.get("shift", 1.0))

    def _flow_scheduler(self):
        """A ``FlowMatchEulerDiscreteScheduler`` of the checkpoint's config and shift (Wan ships a
        UniPC scheduler over the same flow sigmas, whose shift is its ``flow_shift``)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config, shift=self.flow_shift())

    def _time_from_index(self, index: Tensor) -> Tensor:
        return self.train_sigmas.to(index.device)[index]

    def _add_noise_flat(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        sigma = per_group(t, x0)
        return (1 - sigma) * x0 + sigma * noise

    def noise_scales(self, t: Tensor) -> tuple[Tensor, Tensor]:
        sigma = t.float()
        return 1 - sigma, sigma

    def sampling_times(self, steps: int, latent_size: tuple[int, int] | None = None) -> Tensor:
        # The shifted Euler sigmas (FlowMatchEulerDiscreteScheduler.set_timesteps), ending at σ = 0.
        scheduler = self._flow_scheduler()
        if scheduler.config.get("use_dynamic_shifting"):
            raise NotImplementedError("sampling with a dynamically shifted schedule (use_dynamic_shifting) "
                                      "is not supported; the SD3 and Wan checkpoints use a fixed shift")
        scheduler.set_timesteps(steps)
        return scheduler.sigmas.float()

    def inversion_levels(self, steps: int, latent_size: tuple[int, int] | None = None) -> Tensor:
        # No official flow inversion exists (InPO and SmPO are ε-only): the sampler's own Euler
        # grid walked upwards, from σ = 0 to its noisiest level.
        return self.sampling_times(steps, latent_size).flip(0)

    def split_prediction(self, pred: Tensor, noisy: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        # x = (1 − σ)·x0 + σ·ε and v = ε − x0:  x0 = x − σ·v,  ε = x + (1 − σ)·v.
        sigma = per_group(t, noisy)
        return noisy + (1 - sigma) * pred, noisy - sigma * pred

    def _target_flat(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        return noise - x0

    def _predict_flat(self, model, noisy: Tensor, t: Tensor, cond) -> Tensor:
        # Flow transformers take the timestep as σ·N, with the text as encoder_hidden_states.
        dtype = input_dtype(model, self.denoiser)
        return model(hidden_states=noisy.to(dtype), timestep=t * self.num_train_timesteps,
                     encoder_hidden_states=cond.prompt_embeds.to(dtype), **self._extra_inputs(cond, dtype),
                     return_dict=False)[0]

    def _extra_inputs(self, cond, dtype) -> dict:
        """What the family's transformer takes besides the text tokens (SD3: the pooled text)."""
        return {}

    def loss_weight(self, t: Tensor) -> Tensor:
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        return compute_loss_weighting_for_sd3(self.loss_weighting, t.float())
