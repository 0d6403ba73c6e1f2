"""The one solver: a loop over a time grid (:func:`solve`) that every sampler, rollout and
inversion in diffalign runs, with a per-step **noise rule** deciding how a step moves from time
``u`` to ``v`` (:class:`NoiseRule`: η-DDIM here, :class:`DDIM`; the rising inversion step in
:mod:`diffalign.inversion`; online RL's rules plug in the same way). It keeps what is asked — the
latent at every step, the model's prediction there, and the Gaussian log-probability of each step
taken under the policy and the reference (:func:`gaussian_log_prob`, the one place a step's
log-probability is computed) — and calls a per-step callback.

**One stochastic step for every family.** A family's forward process is ``x_t = a_t·x0 + s_t·ε``
(:meth:`~diffalign.families.noise.NoiseOperations.noise_scales`). DDIM (Song et al., 2021, Eq. 12)
builds, for such a Gaussian path, a reverse transition from level ``u`` to a lower level ``v``::

    x_v = a_v·x̂0 + √(s_v² − σ²)·ε̂ + σ·z,     z ~ N(0, I),     σ = η·σ_post(u, v)
    σ_post(u, v) = (s_v/s_u)·√(s_u² − (a_u·s_v/a_v)²)

where ``(ε̂, x̂0)`` is the model's prediction split by the family (``split_prediction``). Given the
true ``(ε, x0)`` it keeps every marginal ``q(x_v | x0) = N(a_v·x0, s_v²)`` exactly, for any
``0 ≤ σ ≤ s_v``. ``σ_post`` is the std of the posterior ``q(x_v | x_u, x0)`` (η = 1: ancestral
sampling); on variance-preserving paths (``a² + s² = 1``) it is DDIM's
``√((1 − ᾱ_v)/(1 − ᾱ_u))·√(1 − ᾱ_u/ᾱ_v)``, so for ε- and v-prediction UNets the step is
diffusers' ``DDIMScheduler.step`` with ``eta``. SPO samples with η = 1.

**Flow matching (SD3): the SDE form of the Euler sampler.** With ``a = 1 − σ_t``, ``s = σ_t``
(the flow's noise level, written ``σ_t`` to keep it apart from the step's ``σ``),
``x̂0 = x − σ_t·v̂`` and ``ε̂ = x + (1 − σ_t)·v̂``. At η = 0 the step above is
``x_v = x_u + (σ_v − σ_u)·v̂``, exactly the Euler step of the flow ODE ``dx = v dσ_t``
(diffusers' ``FlowMatchEulerDiscreteScheduler``). For η > 0 it discretises a reverse-time SDE
with the ODE's marginals: for any diffusion coefficient ``g``, the process
``dx = [v − (g²/2)·∇log p_t(x)] dσ_t + g dW̄``, run from σ_t = 1 down to 0, has the same
marginals (Song et al., 2021b, Eq. 13, written in σ_t). The flow's score is
``∇log p_t = −ε̂/σ_t = −(x + (1 − σ_t)·v̂)/σ_t``, so a step of ``Δ = σ_u − σ_v`` reads::

    x_v = x_u − Δ·[v̂ + (g²/2σ_u)·(x_u + (1 − σ_u)·v̂)] + g·√Δ·z

For the step above, ``a_u·s_v/(a_v·s_u) ≈ 1 − Δ/(σ_t(1 − σ_t))``, so ``σ² ≈ 2η²·σ_t·Δ/(1 − σ_t)``:
the SDE with ``g = η·√2·√(σ_t/(1 − σ_t))``, which is Flow-GRPO's (Liu et al., 2025, Eq. 8) with
its noise level ``a = η·√2``. Each transition is integrated so that it keeps the marginals
exactly rather than to first order in Δ, and it is Gaussian with a known mean and variance,
which is what a step log-probability needs.

**Log-probabilities.** ``log p(x_v | x_u) = mean_d[−(x_v − μ)²/(2σ²) − log σ − ½·log 2π]``, a
*mean* over latent elements by default: SPO's official code averages, so its β = 10 and its
ratio clip apply to that scale (see :mod:`diffalign.objectives.spo`); ``reduction="sum"`` gives
the density of the whole latent. Steps with σ = 0 (η = 0, or a last step onto a clean level) are
point masses and get log-probability 0; no objective trains on them.

Shapes: latents ``[B, K, *latent]``, one time per group ``[B]``, all ``B·K`` images in one forward.
Each process samples its own batch: under ``accelerate`` the data loader hands every process its
own prompts, so rollouts are split across processes with nothing repeated.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Literal, Protocol

import torch
from torch import Tensor

from diffalign.families.noise import per_group

REDUCTIONS = ("mean", "sum")


@dataclass
class Trajectory:
    """What :func:`solve` keeps.

    Attributes:
        latents: ``[S + 1, B, K, *latent]``, the start and the latent after each step.
        times: ``[B, S + 1]`` normalised time of each of those latents (what the model is told).
        predictions: ``[S, B, K, *latent]`` the (guided) prediction at each step's start, in the
            family's parameterisation, or ``None`` unless asked for.
        log_prob, ref_log_prob: ``[S, B, K]`` log-probability of each step taken under the
            sampling model / the reference (``None`` unless asked for; 0 where σ = 0).
    """

    latents: Tensor
    times: Tensor
    predictions: Tensor | None = None
    log_prob: Tensor | None = None
    ref_log_prob: Tensor | None = None

    @property
    def final(self) -> Tensor:
        """``[B, K, *latent]``, the sample."""
        return self.latents[-1]


def sampling_grid(family, steps: int, batch: int, latent_size: tuple[int, int] | None = None) -> Tensor:
    """``[B, steps + 1]`` falling normalised times: the family's own sampler grid (DDIM's
    timesteps for UNets, SD3's shifted sigmas, FLUX's shifted for latents of ``latent_size``
    ``(h, w)``) ending at 0."""
    return family.sampling_times(steps, latent_size).float()[None].expand(batch, -1).clone()


def guided(family, model, x: Tensor, t: Tensor, cond, uncond=None, guidance: float = 1.0,
           detach_uncond: bool = False) -> Tensor:
    """The model's prediction at ``x`` (``[B, K, *latent]``), with classifier-free guidance
    ``pred_u + w·(pred_c − pred_u)`` (the family's :meth:`combine_guidance`) when ``guidance != 1`` (``uncond`` shaped like ``cond``; both
    predictions in one forward, as the pipelines do). In float32; differentiable unless called
    under ``no_grad``; ``detach_uncond`` lets the gradient through the conditional half only
    (Flow-GRPO's SD3 training, ``scripts/train_sd3.py`` L189–190). A family that takes no guidance
    (:attr:`takes_guidance` false: a step-distilled checkpoint) predicts once, as its pipeline does."""
    if guidance != 1 and not family.takes_guidance:
        warnings.warn(f"guidance {guidance} is ignored: this {family.name} checkpoint is step-distilled and takes "
                      "no classifier-free guidance (its pipeline ignores guidance_scale too); set guidance: 1 to "
                      "silence this", stacklevel=2)
        guidance = 1.0
    if guidance == 1:
        return family.predict(model, x, t, cond).float()
    if uncond is None:
        raise ValueError("guidance other than 1 needs the unconditional conditioning (uncond)")
    k = x.shape[1]
    both = family.predict(model, torch.cat([x, x], dim=1), t, cond.join(uncond)).float()
    pred, pred_uncond = both[:, :k], both[:, k:]
    if detach_uncond:
        pred_uncond = pred_uncond.detach()
    return family.combine_guidance(pred, pred_uncond, guidance)


def level_scales(family, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """``(a_t, s_t)`` shaped to broadcast on ``like``; a clean end point (t = 0) takes the
    family's final level (``final_scales``: DDIM's ``set_alpha_to_one``)."""
    a, s = family.noise_scales(t)
    a_end, s_end = family.final_scales()
    end = t <= 0
    a, s = torch.where(end, torch.as_tensor(a_end, dtype=a.dtype), a), torch.where(end, torch.as_tensor(s_end, dtype=s.dtype), s)
    return per_group(a, like), per_group(s, like)


def step_mean_std(family, pred: Tensor, x: Tensor, u: Tensor, v: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """Mean ``[B, K, *latent]`` and std ``[B, 1, …]`` of the step from time ``u`` to ``v`` (``[B]``)."""
    x = x.float()
    a_u, s_u = level_scales(family, u, x)
    a_v, s_v = level_scales(family, v, x)
    eps, x0 = family.split_prediction(pred, x, u)
    # σ_post = (s_v/s_u)·√(s_u² − (a_u·s_v/a_v)²); a clean target level (s_v = 0) gives 0.
    std = eta * (s_v / s_u.clamp(min=1e-12)) * (s_u**2 - (a_u * s_v / a_v.clamp(min=1e-12)) ** 2).clamp(min=0).sqrt()
    mean = a_v * x0 + (s_v**2 - std**2).clamp(min=0).sqrt() * eps
    return mean, std


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor, reduction: str = "mean", *,
                      constants: bool = True) -> Tensor:
    """``[B, K]`` log N(x; mean, std²) of each latent, reduced over its elements (0 where std = 0).

    ``constants=False`` leaves out ``−log σ − ½·log 2π``, which depend on the times only and
    cancel in a ratio of two models' probabilities of the same step (SPO's terms)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    std = std.expand_as(mean)
    safe = std.clamp(min=1e-20)
    per_element = -((x.float() - mean) ** 2) / (2 * safe**2)
    if constants:
        per_element = per_element - safe.log() - 0.5 * math.log(2 * math.pi)
    per_element = torch.where(std > 0, per_element, torch.zeros_like(per_element))
    dims = tuple(range(2, x.ndim))
    return per_element.mean(dims) if reduction == "mean" else per_element.sum(dims)


def step_log_prob(family, model, x: Tensor, x_next: Tensor, u: Tensor, v: Tensor, cond, *, rule: NoiseRule,
                  uncond=None, guidance: float = 1.0, reduction: str = "mean", constants: bool = True) -> Tensor:
    """``[B, K]`` log-probability that ``model`` steps from ``x`` at ``u`` to ``x_next`` at ``v``
    under ``rule`` (``x_next`` may hold several candidates per group: ``[B, n, *latent]`` from
    ``x [B, 1, *latent]``).

    Differentiable in ``model``'s parameters (call it under ``no_grad`` for the reference); this
    is the quantity SPO's loss takes.
    """
    predict = lambda x_, t_: guided(family, model, x_, t_, cond, uncond, guidance)  # noqa: E731
    _, mean, std = rule.transition(family, predict, x, u, v)
    return rule_log_prob(rule, x_next, mean, std, reduction, constants=constants)


def rule_log_prob(rule, x: Tensor, mean: Tensor, std: Tensor, reduction: str = "mean", *,
                  constants: bool = True) -> Tensor:
    """``[B, K]`` log-probability of a step under ``rule``: the rule's own ``log_prob(x, mean, std,
    reduction)`` where it defines one (CPS's unnormalised form, :mod:`diffalign.noise_rules`),
    else :func:`gaussian_log_prob`."""
    own = getattr(rule, "log_prob", None)
    return own(x, mean, std, reduction) if own is not None else gaussian_log_prob(x, mean, std, reduction,
                                                                                  constants=constants)


def draw(like: Tensor, generator) -> Tensor:
    """Standard normal noise shaped like ``like`` (float32; one generator, or one per group)."""
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(like.shape, generator=generator, device=like.device, dtype=torch.float32)


class NoiseRule(Protocol):
    """How one step of :func:`solve` moves from time ``u`` to ``v`` (``[B]`` each): a Gaussian
    transition ``N(mean, std²)`` built from the model's prediction (``std = 0``: deterministic).

    ``transition(family, predict, x, u, v)`` returns ``(pred, mean, std)``: ``pred`` the
    prediction at ``(x, u)`` (``predict(x, t)`` gives it, guided as the caller asked; a rule may
    call it more than once, e.g. ReNoise), ``mean`` ``[B, K, *latent]`` and ``std``
    broadcastable to it. ``stochastic`` says whether the step draws ``mean + std·z``. A rule may
    define ``log_prob(x, mean, std, reduction)`` for a step's log-probability other than the
    Gaussian's (:func:`rule_log_prob`; :mod:`diffalign.noise_rules` has online RL's rules), and
    ``start()``, which :func:`solve` calls as a walk begins (a multistep rule forgets its history:
    :mod:`diffalign.dpm_solver`).
    """

    stochastic: bool

    def transition(self, family, predict, x: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]: ...


class DDIM:
    """η-DDIM on a falling grid (the module docstring): η = 0 is deterministic DDIM / the flow's
    Euler step, η = 1 DDPM's posterior variance (flow: the SDE form)."""

    def __init__(self, eta: float = 1.0):
        self.eta = eta
        self.stochastic = eta > 0

    def transition(self, family, predict, x: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pred = predict(x, u)
        return (pred, *step_mean_std(family, pred, x, u, v, self.eta))


def take_step(rule: NoiseRule, mean: Tensor, std: Tensor, generator) -> Tensor:
    """The latent a step lands on: ``mean + std·z`` for a stochastic rule (``mean`` may hold
    several candidates per group, each drawn), else ``mean``."""
    return mean + std * draw(mean, generator) if rule.stochastic else mean


def solve(
    family, model, noise: Tensor, cond, grid: Tensor, rule: NoiseRule, *, guidance: float = 1.0, uncond=None,
    generator=None, reference=None, log_probs: bool = False, keep_predictions: bool = False,
    reduction: Literal["mean", "sum"] = "mean", stop_after: int | None = None, callback: Callable | None = None,
    grad: bool = False,
) -> Trajectory:
    """Walk ``noise`` along ``grid`` with ``model`` and ``rule``, keeping the trajectory.

    Args:
        noise: ``[B, K, *latent]`` latents at ``grid[:, 0]`` (a full sample: N(0, I) at t = 1;
            an inversion: clean latents at t = 0 on a rising grid).
        cond, uncond: ``[B, K, ...]`` conditionings (``uncond`` for ``guidance != 1``).
        grid: ``[B, S + 1]`` times (:func:`sampling_grid`, or one per group). A group whose
            grid repeats its last time has ended: on those zero-length steps it stays where it
            is and the model is not run on it (the official inversion landing).
        rule: the noise rule of every step (:class:`DDIM`, or inversion's).
        generator: one, or one per group, for the step noise.
        reference: a :class:`~diffalign.families.reference.Reference`; with ``log_probs`` the
            reference's log-probability of each step taken is kept too.
        log_probs: keep each step's log-probability under ``model`` (and the reference).
        keep_predictions: keep the prediction at each step.
        stop_after: take only the first ``stop_after`` steps (Diffusion-DRO needs the states up to
            a drawn step, not the clean sample).
        callback: ``callback(i, x, t)`` after each step (``t [B]`` the time ``x`` is at).
        grad: keep the autograd graph through the whole chain (memory grows with every step);
            by default no gradient, as the rollouts and inversions need none through the chain.
    """
    if guidance != 1 and uncond is None:
        raise ValueError("guidance other than 1 needs the unconditional conditioning (uncond)")
    steps = grid.shape[1] - 1 if stop_after is None else min(stop_after, grid.shape[1] - 1)
    x = noise.float()
    latents, preds, logps, ref_logps = [x], [], [], []

    def predict(with_model):
        return lambda x_, t_: guided(family, with_model, x_, t_, cond, uncond, guidance)

    # Asked once per solve, so a grid without ended groups costs no device sync per step.
    uneven = bool((grid[:, 1:steps + 1] == grid[:, :steps]).any())
    if hasattr(rule, "start"):
        rule.start()
    with contextlib.nullcontext() if grad else torch.no_grad():
        for i in range(steps):
            u, v = grid[:, i].to(x.device), grid[:, i + 1].to(x.device)
            moving = u != v
            if uneven and not bool(moving.all()):  # some groups' grids have ended: only the others move
                if log_probs or keep_predictions:
                    raise ValueError("a grid whose groups end at different steps keeps no log-probabilities "
                                     "or predictions")
                x = _move_some(family, model, rule, x, u, v, moving, cond, uncond, guidance, generator)
                latents.append(x)
                if callback is not None:
                    callback(i, x, v)
                continue
            pred, mean, std = rule.transition(family, predict(model), x, u, v)
            x_next = take_step(rule, mean, std, generator)
            if log_probs:
                logps.append(rule_log_prob(rule, x_next, mean, std, reduction))
                if reference is not None:
                    with reference.active() as ref:
                        ref_mean, ref_std = rule.transition(family, predict(ref), x, u, v)[1:]
                        ref_logps.append(rule_log_prob(rule, x_next, ref_mean, ref_std, reduction))
            if keep_predictions:
                preds.append(pred)
            x = x_next
            latents.append(x)
            if callback is not None:
                callback(i, x, v)
    stack = (lambda xs: torch.stack(xs) if xs else None)
    return Trajectory(torch.stack(latents), grid[:, : steps + 1].to(noise.device), stack(preds), stack(logps),
                      stack(ref_logps))


def _move_some(family, model, rule: NoiseRule, x: Tensor, u: Tensor, v: Tensor, moving: Tensor, cond, uncond,
               guidance: float, generator) -> Tensor:
    """One step of the groups ``moving [B]`` (bool) only; the others stay where they are and the
    model is not run on them (the official inversion's groups take different numbers of steps)."""
    index = moving.nonzero().flatten()
    if index.numel() == 0:
        return x
    sub_cond = cond.groups(index)
    sub_uncond = None if uncond is None else uncond.groups(index)
    gens = [generator[j] for j in index.tolist()] if isinstance(generator, (list, tuple)) else generator
    predict = lambda x_, t_: guided(family, model, x_, t_, sub_cond, sub_uncond, guidance)  # noqa: E731
    _, mean, std = rule.transition(family, predict, x[index], u[index], v[index])
    x = x.clone()
    x[index] = take_step(rule, mean, std, gens)
    return x


def initial_noise(family, batch: int, group_size: int, size: int | tuple[int, int], generator=None,
                  device=None, frames: int | None = None) -> Tensor:
    """``[B, K, C, h, w]`` N(0, I) start latents for images of ``size`` pixels (a side, or ``(H, W)``);
    with ``frames`` (a video family's clips), ``[B, K, C, f, h, w]``."""
    from diffusers.utils.torch_utils import randn_tensor

    height, width = (size, size) if isinstance(size, int) else size
    f = family.vae_scale_factor
    channels = family.latent_channels
    time = () if frames is None else (family.latent_frames(frames),)
    return randn_tensor((batch, group_size, channels, *time, height // f, width // f), generator=generator,
                        device=device or family.device, dtype=torch.float32)


__all__ = ["DDIM", "REDUCTIONS", "NoiseRule", "Trajectory", "draw", "gaussian_log_prob", "guided", "initial_noise",
           "level_scales", "rule_log_prob", "sampling_grid", "solve", "step_log_prob", "step_mean_std", "take_step"]
