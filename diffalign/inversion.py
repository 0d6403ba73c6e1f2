"""DDIM inversion: the solver (:func:`diffalign.solver.solve`) on a rising time grid, with the
rising step as its noise rule (:class:`Inversion`), the way ``flow_matching``'s ``ODESolver``
runs its grid backwards. :func:`denoise` is the same solver on a falling grid with η = 0.

The step needs only two family operations, so it serves every family and latent rank:
``noise_scales(t) → (a_t, s_t)`` with ``x_t = a_t·x0 + s_t·ε``, and ``split_prediction`` (the
model's output as ``(ε̂, x̂0)``). One step from time ``u`` to ``v`` is DDIM's (Song et al., 2021,
Eq. 12 with σ = 0), written in those scales::

    x_v = a_v·x̂0 + s_v·ε̂

For ε- and v-prediction UNets that is DDIM (inversion: Mokady et al., 2023); for rectified flow
(``a = 1 − σ``, ``s = σ``) it is exactly the Euler step ``x_v = x_u + (σ_v − σ_u)·v̂`` of the flow
ODE, so SD3 needs no code of its own.

Inversion options (:class:`InversionConfig`):

- ``landing``: where the inverted latent ends. ``"official"`` (the default): the official InPO and
  SmPO code (``train.py`` L995–1011 / L1002–1022; ``DDIMInverseScheduler.set_timesteps(S)``,
  InPO L866/875, SmPO L872/881) walks a fixed grid of ``steps`` = S levels over the whole schedule
  (:meth:`~diffalign.families.interface.FamilyInterface.inversion_levels`) and takes every grid
  step that starts below the sampled ``t``; under the diffusers it pins (0.20) each step goes from
  its grid point up to the next level, so the latent ends at the **first grid level at or above
  t** (up to ``1000/S − 1`` timesteps noisier; above the last start it stays at the last level),
  while the model is told ``t`` and the target is built with ``t``'s scales. ``"exact"``: every
  group walks ``steps`` equal steps from 0 to its own ``t`` and lands on it. On the toy's protocol
  the official landing gains 15× (InPO) and 2.6× (SmPO) what the exact one does
  (``benchmarks/results/toy.md``, the landing ablation): the latent is noisier than the level the
  model is told, and that mismatch, not the coarse grid, is what helps (the issue's reviewer
  found that telling the model the level reached loses the gain).
- ``renoise_iters``: ReNoise (Garibi et al., 2024): the step's ε̂ is re-estimated at the point
  it reaches and the estimates are averaged. ``renoise_at = "start"`` (official SmPO, L1017–1022):
  the re-estimate is taken at the step's **start** time ``u`` and averaged with the first
  estimate, ``ε̂ = (ε̂(x, u) + ε̂(x', u))/2``. ``"end"``: at the time ``v`` of the point it is
  made on, the re-estimates alone averaged (fixed-point iterations towards the exact inverse of
  a DDIM sampling step, which needs ε̂ where the step ends).
- ``eta``: InPO's noise kick: after each rising step, ``η·σ_DDIM(u, v)·z`` with ``z ~ N(0, I)``,
  ``σ_DDIM(u, v) = (s_u/s_v)·√(1 − (a_v/a_u)²)`` (DDIM's σ between the two levels, the official
  ``DDIMScheduler._get_variance(v, u)``).
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
from diffalign.solver import DDIM, solve

INVERSION_MODELS = ("policy", "reference")
LANDINGS = ("official", "exact")
RENOISE_TIMES = ("start", "end")


@dataclass
class InversionConfig:
    """How latents are found by inversion (see the module docstring for each option)."""

    steps: int = 10
    """``landing: official``: the grid's size S (official InPO 10, SmPO 5 on SD1.5 / 10 on SDXL);
    ``exact``: the equal steps from 0 to each group's t (6 and 4 cost what S = 10 and 5 cost on
    average over a uniform t: 6.38 and 3.79 steps)."""
    landing: Literal["official", "exact"] = "official"
    renoise_iters: int = 0
    renoise_at: Literal["start", "end"] = "start"
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
        if self.landing not in LANDINGS:
            raise ValueError(f"landing must be one of {', '.join(LANDINGS)}, got {self.landing!r}")
        if self.renoise_at not in RENOISE_TIMES:
            raise ValueError(f"renoise_at must be one of {', '.join(RENOISE_TIMES)}, got {self.renoise_at!r}")
        if self.model not in INVERSION_MODELS:
            raise ValueError(f"model must be one of {', '.join(INVERSION_MODELS)}, got {self.model!r}")

    @property
    def model_calls(self) -> int:
        """Denoiser forwards per image (no gradient) that one inversion costs at most (the
        official landing takes fewer steps below a small t)."""
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


class Inversion:
    """The rising DDIM step (module docstring) as a noise rule of :func:`~diffalign.solver.solve`:
    ε̂ at the start, ``renoise_iters`` ReNoise re-estimates (at the step's start time or at the
    time of the point re-estimated, ``renoise_at``), and InPO's noise kick ``η·σ_DDIM(u, v)·z`` as
    the step's std."""

    def __init__(self, renoise_iters: int = 0, eta: float = 0.0, renoise_at: str = "start"):
        self.renoise_iters, self.eta, self.renoise_at = renoise_iters, eta, renoise_at
        self.stochastic = eta > 0

    def transition(self, family, predict, x: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if not bool((v >= u).all()):
            raise ValueError("the inversion rule walks rising grids; denoise with diffalign.solver.DDIM(0)")
        a_u, s_u = (per_group(c, x) for c in family.noise_scales(u))
        a_v, s_v = (per_group(c, x) for c in family.noise_scales(v))

        def rise(eps: Tensor) -> Tensor:
            # Keep ε̂ and take x̂0 consistent with the start, x̂0 = (x − s_u·ε̂)/a_u (a_u > 0 below t = 1).
            return a_v * (x - s_u * eps) / a_u + s_v * eps

        pred = predict(x, u)
        first = family.split_prediction(pred, x.float(), u)[0]
        mean = rise(first)
        # SmPO's ReNoise averages the first estimate in; the fixed-point form averages re-estimates only.
        estimates = [first] if self.renoise_at == "start" else []
        for _ in range(self.renoise_iters):
            at = u if self.renoise_at == "start" else v
            estimates.append(family.split_prediction(predict(mean, at), mean.float(), at)[0])
            mean = rise(torch.stack(estimates).mean(0))
        std = self.eta * per_group(ddim_sigma(family, u, v), mean) if self.stochastic else torch.zeros_like(s_v)
        return pred, mean, std


def landing_grid(family, t: Tensor, steps: int, latent_size: tuple[int, int] | None = None) -> Tensor:
    """``[B, steps + 1]`` rising times of the official landing: the family's inversion levels
    ``L_0 < … < L_S`` (:meth:`~diffalign.families.interface.FamilyInterface.inversion_levels`)
    up to the first level at or above each group's ``t [B]`` (the steps that start below ``t``),
    then that level repeated: the solver leaves a group where it is on a step of zero length."""
    levels = family.inversion_levels(steps, latent_size).float().to(t.device)
    # Steps k start at L_k; the official loop takes those with L_k < t (integer timesteps there;
    # the tolerance keeps a t equal to a grid level from counting as above it).
    taken = (levels[None, :-1] < t.float()[:, None] - 1e-6).sum(1).clamp(min=1)  # [B], at least one step
    index = torch.minimum(torch.arange(steps + 1, device=t.device)[None], taken[:, None])
    return levels[index]


def invert(family, model, latents: Tensor, cond, t: Tensor, config: InversionConfig | None = None, *,
           uncond=None, generator=None, callback: Callable | None = None) -> Tensor:
    """Invert clean ``latents [B, K, *latent]`` towards each group's time ``t [B]``: onto it
    (``landing: exact``) or where the official grid leaves it (``official``: :func:`landing_grid`)."""
    config = config or InversionConfig()
    if config.landing == "exact":
        grid = time_grid(0.0, t.float(), config.steps, batch=t.shape[0])
    else:
        grid = landing_grid(family, t, config.steps, latents.shape[-2:])
    rule = Inversion(config.renoise_iters, config.eta, config.renoise_at)
    return solve(family, model, latents, cond, grid, rule, guidance=config.guidance, uncond=uncond,
                 generator=generator, callback=callback).final


def denoise(family, model, noisy: Tensor, cond, steps: int, start: Tensor | float = 1.0, *, guidance: float = 1.0,
            uncond=None, callback: Callable | None = None) -> Tensor:
    """Deterministic DDIM (flow: Euler) sampling of ``noisy`` from time ``start`` down to 0 in ``steps`` steps."""
    grid = time_grid(start, 0.0, steps, batch=noisy.shape[0])
    return solve(family, model, noisy, cond, grid, DDIM(0.0), guidance=guidance, uncond=uncond,
                 callback=callback).final


__all__ = ["INVERSION_MODELS", "Inversion", "InversionConfig", "LANDINGS", "RENOISE_TIMES", "ddim_sigma", "denoise", "invert",
           "landing_grid", "time_grid"]
