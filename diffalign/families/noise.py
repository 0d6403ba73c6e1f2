"""The noise maths of a family: times, the forward process, targets and denoising errors.

Everything here works on latents of any rank: ``[B, K, *latent]`` with ``*latent`` = ``C, h, w``
for images or ``C, f, h, w`` for video. A family describes its forward process by two numbers
per time, ``x_t = a_t·x0 + s_t·ε`` (:meth:`NoiseOperations.noise_scales`), and by how its
prediction splits into a noise and a clean estimate (``split_prediction``); DDIM inversion and
sampling (:mod:`diffalign.inversion`) need nothing else.

Time: objectives see ``t`` as a float tensor ``[B]`` in [0, 1], the noise level normalised
(0 = clean, 1 = pure noise). Each family converts it to its own scheduler units.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from diffalign.families.latents import Generators

if TYPE_CHECKING:
    from diffalign.families.conditioning import Conditioning

TIME_SAMPLINGS = ("uniform", "logit_normal", "mode")


def per_group(values: Tensor, like: Tensor) -> Tensor:
    """``[B]`` values shaped to broadcast against ``[B, ...]`` tensors of ``like``'s rank and dtype."""
    return values.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


class NoiseOperations:
    """A subclass implements ``_time_from_index``, ``noise_scales``, ``split_prediction``,
    ``_add_noise_flat``, ``_target_flat`` and ``loss_weight``."""

    def sample_noise_and_time(self, latents: Tensor, generator: Generators = None) -> tuple[Tensor, Tensor]:
        """One noise and one time per group, shared by its ``K`` images (as Diffusion-DPO does).

        Args:
            latents: ``[B, K, *latent]`` (``*latent`` = ``C, h, w``, or ``C, f, h, w`` for video).
            generator: one generator, or a list of ``B`` (one per group: then each group's draw
                depends only on its own generator, whatever the batch or process layout).

        Returns:
            ``noise`` shaped like ``latents`` (identical along K) and ``t [B]`` in [0, 1].
        """
        from diffusers.utils.torch_utils import randn_tensor

        b = latents.shape[0]
        noise = randn_tensor((b, 1, *latents.shape[2:]), generator=generator, device=latents.device, dtype=latents.dtype)
        return noise.expand_as(latents), self._sample_time(b, latents.device, generator)

    def _sample_time(self, batch: int, device, generator: Generators) -> Tensor:
        """Draw ``u ~ density`` in [0, 1) per group and map it to the family's noise levels."""
        from diffusers.training_utils import compute_density_for_timestep_sampling

        gens = generator if isinstance(generator, (list, tuple)) else [generator]
        sizes = [1] * batch if len(gens) > 1 else [batch]
        if len(gens) > 1 and len(gens) != batch:
            raise ValueError(f"got {len(gens)} generators for {batch} groups")
        # Drawn where each generator lives, then moved: a CPU generator cannot draw on a GPU.
        u = torch.cat([
            compute_density_for_timestep_sampling(
                self.time_sampling, size, device=gen.device if gen is not None else device, generator=gen, **self._density
            ).to(device)
            for gen, size in zip(gens, sizes)
        ])
        n = self.num_train_timesteps
        # As diffusers' SD3 scripts do: u picks one of the scheduler's N discrete training times.
        return self._time_from_index((u * n).long().clamp(0, n - 1))

    @property
    def num_train_timesteps(self) -> int:
        return self.pipe.scheduler.config.num_train_timesteps

    def _time_from_index(self, index: Tensor) -> Tensor:
        """Scheduler training index ``[N]`` → normalised time ``[N]`` in [0, 1]."""
        raise NotImplementedError

    def add_noise(self, latents: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Forward diffusion of ``[B, K, ...]`` latents at group times ``t [B]``."""
        return self._grouped(self._add_noise_flat, latents, noise, t)

    def target(self, latents: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the denoiser should predict: epsilon, v, or flow velocity; ``[B, K, ...]``."""
        return self._grouped(self._target_flat, latents, noise, t)

    def loss_weight(self, t: Tensor) -> Tensor:
        """Per-group weight ``[B]`` of the denoising error (1 unless a weighting is configured)."""
        raise NotImplementedError

    def denoising_error(
        self, model: torch.nn.Module, latents: Tensor, cond: Conditioning, noise: Tensor, t: Tensor
    ) -> Tensor:
        """Weighted mean-squared denoising error of every image.

        ``err[b, k] = w(t_b) · mean_{c,h,w} (model(x_t, t, c) − target)²``, in fp32.

        Args:
            latents, noise: ``[B, K, *latent]``; cond: ``[B, K, ...]``; t: ``[B]``.

        Returns:
            ``[B, K]``, differentiable with respect to ``model``'s parameters.
        """
        noisy = self.add_noise(latents, noise, t)
        return self.prediction_error(self.predict(model, noisy, t, cond), self.target(latents, noise, t), t)

    def prediction_error(self, pred: Tensor, target: Tensor, t: Tensor) -> Tensor:
        """``[B, K]`` fp32 ``w(t_b) · mean (pred − target)²`` of predictions ``[B, K, *latent]``
        against any target (Diffusion-DRO's rollout states take the snapshot's prediction)."""
        # Mean over every latent element (C·h·w, or C·f·h·w for video), whatever the rank.
        err = (pred.float() - target.float()).pow(2).mean(dim=tuple(range(2, pred.ndim)))
        return err * self.loss_weight(t).to(err)[:, None]

    @staticmethod
    def _grouped(fn, latents: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        b, k = latents.shape[:2]
        out = fn(latents.flatten(0, 1), noise.flatten(0, 1), t.repeat_interleave(k))
        return out.unflatten(0, (b, k))

    def _add_noise_flat(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _target_flat(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    # ----------------------------------------------------------------------------- the path
    def noise_scales(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(a_t, s_t)``, each ``[N]`` float32, with ``x_t = a_t·x0 + s_t·ε`` at normalised times ``t [N]``."""
        raise NotImplementedError

    def sampling_times(self, steps: int, latent_size: tuple[int, int] | None = None) -> Tensor:
        """``[steps + 1]`` falling normalised times of the family's sampler with ``steps`` steps,
        ending at 0 (:mod:`diffalign.solver`); ``latent_size`` ``(h, w)`` of the latents sampled,
        for a family whose schedule depends on it (FLUX's dynamic shift), ignored by the others."""
        raise NotImplementedError

    def inversion_levels(self, steps: int, latent_size: tuple[int, int] | None = None) -> Tensor:
        """``[steps + 1]`` rising normalised times of the official inversion grid with ``steps``
        steps (:func:`diffalign.inversion.landing_grid`); ``latent_size`` as for :meth:`sampling_times`."""
        raise NotImplementedError

    def final_scales(self) -> tuple[float, float]:
        """``(a, s)`` of the clean level a sampler's last step lands on (t = 0)."""
        a, s = self.noise_scales(torch.zeros(1))
        return float(a), float(s)

    def split_prediction(self, pred: Tensor, noisy: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The model's noise and clean-latent estimates ``(ε̂, x̂0)`` from its prediction.

        Args:
            pred, noisy: ``[B, K, *latent]``; t: ``[B]``.
        """
        raise NotImplementedError

    def implied_noise(self, latents: Tensor, noisy: Tensor, t: Tensor) -> Tensor:
        """The noise ``τ`` with ``noisy = a_t·latents + s_t·τ``: what a latent found by inversion
        was noised with. ``add_noise(latents, τ, t)`` gives ``noisy`` back, so the denoising
        error of an inverted latent is :meth:`denoising_error` with ``noise = τ``.

        Args:
            latents, noisy: ``[B, K, *latent]``; t: ``[B]``.
        """
        a, s = self.noise_scales(t)
        return (noisy - per_group(a, noisy) * latents) / per_group(s, noisy)
