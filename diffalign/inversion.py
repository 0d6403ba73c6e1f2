"""DDIM inversion and sampling: one deterministic walk over a time grid, whose direction decides
which it is (rising times invert a clean latent towards noise; falling times denoise).

The walk needs only two family operations, so it serves every family and latent rank:
``noise_scales(t) → (a_t, s_t)`` with ``x_t = a_t·x0 + s_t·ε``, and ``split_prediction`` (the
model's output as ``(ε̂, x̂0)``). One step from time ``u`` to ``v`` is DDIM's (Song et al., 2021,
Eq. 12 with σ = 0), written in those scales::

    x_v = a_v·x̂0 + s_v·ε̂

For ε- and v-prediction UNets that is DDIM (inversion: Mokady et al., 2023); for rectified flow
(``a = 1 − σ``, ``s = σ``) it is exactly the Euler step ``x_v = x_u + (σ_v − σ_u)·v̂`` of the flow
ODE, so SD3 needs no code of its own.

Inversion options (:class:`InversionConfig`):

- ``steps``: every group walks ``steps`` equal steps from 0 to **its own** sampled ``t``, so the
  latent lands exactly on the ``t`` the model is then told. (The official InPO/SmPO code walks a
  fixed ``DDIMInverseScheduler`` grid and stops at a grid point up to ~200 timesteps away from the
  ``t`` it uses, and takes the first item's ``t`` for the whole batch.)
- ``renoise_iters``: ReNoise (Garibi et al., 2024): the step's ε̂ is re-estimated at the point it
  reaches, at that point's time, and the re-estimates are averaged. Plain inversion uses ε̂ from
  where a step starts; the exact inverse of a DDIM sampling step needs ε̂ from where it ends, which
  these fixed-point iterations approach. (SmPO's code averages the first and the re-estimated ε̂
  and evaluates the re-estimate at the starting time; here the re-estimate is at the time of the
  point it is computed on.)
- ``eta``: InPO's noise kick: after each rising step, ``η·σ_DDIM(u, v)·z`` with ``z ~ N(0, I)``,
  ``σ_DDIM(u, v) = (s_u/s_v)·√(1 − (a_v/a_u)²)`` (DDIM's σ between the two levels).
- ``guidance``: classifier-free guidance with the empty prompt's conditioning (1 = conditional only,
  the papers' choice).
- ``model``: ``"policy"`` (the papers' choice: the latents follow the model as it trains) or
  ``"reference"`` (fixed latents for a fixed image, VAE sample and ``t``).

Shapes: latents ``[B, K, *latent]`` (``*latent`` = ``C, h, w`` or ``C, f, h, w``), one time per
group ``t [B]``, all ``B·K`` images in one forward per model call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

from diffalign.families.noise import per_group

INVERSION_MODELS = ("policy", "reference")


@dataclass
class InversionConfig:
    """How latents are found by inversion (see the module docstring for each option)."""

    steps: int = 6
    renoise_iters: int = 0
    eta: float = 0.0
    guidance: float = 1.0
    model: Literal["policy", "reference"] = "policy"

    def __post_init__(self):
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ValueError(f"steps must be an integer ≥ 1, got {self.steps!r}")
        if not (isinstance(self.renoise_iters, int) and self.renoise_iters >= 0):
            raise ValueError(f"renoise_iters must be an integer ≥ 0, got {self.renoise_iters!r}")
        if not self.eta >= 0:
            raise ValueError(f"eta must be ≥ 0, got {self.eta}")
        if not self.guidance >= 0:
            raise ValueError(f"guidance must be ≥ 0, got {self.guidance}")
        if self.model not in INVERSION_MODELS:
            raise ValueError(f"model must be one of {', '.join(INVERSION_MODELS)}, got {self.model!r}")

    @property
    def model_calls(self) -> int:
        """Denoiser forwards per image (no gradient) that one inversion costs."""
        return self.steps * (1 + self.renoise_iters) * (2 if self.guidance != 1 else 1)


def time_grid(start: Tensor | float, end: Tensor | float, steps: int, batch: int | None = None) -> Tensor:
    """``[B, steps + 1]`` equally spaced normalised times from ``start`` to ``end`` per group,
    with the end point exact (``end`` may be a per-group ``[B]`` tensor)."""
    start, end = torch.as_tensor(start, dtype=torch.float32), torch.as_tensor(end, dtype=torch.float32)
    if batch is not None:
        start, end = start.expand(batch), end.expand(batch)
    start, end = torch.broadcast_tensors(start.reshape(-1), end.reshape(-1))
    frac = torch.linspace(0, 1, steps + 1, device=end.device)
    grid = start[:, None] + (end - start)[:, None] * frac
    grid[:, -1] = end  # no rounding away from the time the model is told
    return grid


def ddim_sigma(family, lower: Tensor, upper: Tensor) -> Tensor:
    """DDIM's σ between the noise levels at times ``lower < upper`` (``[B]`` each)."""
    a_lo, s_lo = family.noise_scales(lower)
    a_hi, s_hi = family.noise_scales(upper)
    ratio = (a_hi / a_lo.clamp(min=1e-12)).clamp(max=1)
    return (s_lo / s_hi.clamp(min=1e-12)) * (1 - ratio**2).clamp(min=0).sqrt()


def walk(
    family, model, latents: Tensor, cond, grid: Tensor, *, renoise_iters: int = 0, eta: float = 0.0,
    guidance: float = 1.0, uncond=None, generator=None, callback: Callable | None = None,
) -> Tensor:
    """Walk ``latents`` along ``grid`` (``[B, N + 1]`` times; rising: invert, falling: denoise).

    Args:
        model: the denoiser to call (policy, reference, or a wrapped module); called without gradient.
        cond, uncond: ``[B, K, ...]`` conditionings (``uncond`` only for ``guidance != 1``).
        renoise_iters: rising grids only; ReNoise re-estimates per step.
        eta: rising grids only: InPO's noise kick. Falling grids are deterministic here.
        generator: one, or one per group, for the kicks.
        callback: ``callback(index, x, t)`` after each step (``t [B]`` the time ``x`` is at).

    Returns:
        the latents at ``grid[:, -1]``, shaped like ``latents``.
    """
    if guidance != 1 and uncond is None:
        raise ValueError("guidance other than 1 needs the unconditional conditioning (uncond)")
    x = latents
    with torch.no_grad():
        for i in range(grid.shape[1] - 1):
            u, v = grid[:, i].to(x.device), grid[:, i + 1].to(x.device)
            rising = bool((v >= u).all())
            x = _step(family, model, x, cond, uncond, u, v, guidance, rising, renoise_iters if rising else 0)
            if rising and eta > 0:
                x = x + eta * per_group(ddim_sigma(family, u, v), x) * _randn(x, generator)
            if callback is not None:
                callback(i, x, v)
    return x


def _step(family, model, x: Tensor, cond, uncond, u: Tensor, v: Tensor, guidance: float, rising: bool,
          renoise: int) -> Tensor:
    """One DDIM step from times ``u`` to ``v`` (``[B]``), with ``renoise`` ReNoise iterations."""
    a_u, s_u = (per_group(c, x) for c in family.noise_scales(u))
    a_v, s_v = (per_group(c, x) for c in family.noise_scales(v))
    eps, x0 = _estimate(family, model, x, u, cond, uncond, guidance)
    if rising:
        # Rising: keep ε̂ and take x̂0 consistent with the start, x̂0 = (x − s_u·ε̂)/a_u (a_u > 0 below t = 1).
        x_next = a_v * (x - s_u * eps) / a_u + s_v * eps
        estimates = []
        for _ in range(renoise):
            estimates.append(_estimate(family, model, x_next, v, cond, uncond, guidance)[0])
            mean = torch.stack(estimates).mean(0)
            x_next = a_v * (x - s_u * mean) / a_u + s_v * mean
        return x_next
    # Falling: keep x̂0 and take ε̂ consistent with the start (s_u > 0 above t = 0); the same step
    # when both come from one prediction, and defined at a flow's σ = 1, where a_u = 0.
    return a_v * x0 + s_v * (x - a_u * x0) / s_u


def _estimate(family, model, x: Tensor, t: Tensor, cond, uncond, guidance: float) -> tuple[Tensor, Tensor]:
    """``(ε̂, x̂0)`` of ``model`` at ``x`` and ``t``, in float32, guided when ``guidance != 1``."""
    from diffalign.sampling import guided

    return family.split_prediction(guided(family, model, x, t, cond, uncond, guidance), x.float(), t)


def _randn(like: Tensor, generator) -> Tensor:
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def invert(family, model, latents: Tensor, cond, t: Tensor, config: InversionConfig | None = None, *,
           uncond=None, generator=None, callback: Callable | None = None) -> Tensor:
    """Invert clean ``latents [B, K, *latent]`` to each group's time ``t [B]``, exactly."""
    config = config or InversionConfig()
    grid = time_grid(0.0, t.float(), config.steps, batch=t.shape[0])
    return walk(family, model, latents, cond, grid, renoise_iters=config.renoise_iters, eta=config.eta,
                guidance=config.guidance, uncond=uncond, generator=generator, callback=callback)


def denoise(family, model, noisy: Tensor, cond, steps: int, start: Tensor | float = 1.0, *, guidance: float = 1.0,
            uncond=None, callback: Callable | None = None) -> Tensor:
    """Deterministic DDIM (flow: Euler) sampling of ``noisy`` from time ``start`` down to 0 in ``steps`` steps."""
    grid = time_grid(start, 0.0, steps, batch=noisy.shape[0])
    return walk(family, model, noisy, cond, grid, guidance=guidance, uncond=uncond, callback=callback)


__all__ = ["INVERSION_MODELS", "InversionConfig", "ddim_sigma", "denoise", "invert", "time_grid", "walk"]
