"""DiffusionNFT: "DiffusionNFT: Online Diffusion Reinforcement with Forward Process".

Zheng et al., 2025, https://arxiv.org/abs/2509.16117 (official code: NVlabs/DiffusionNFT @24af555,
``scripts/train_nft_sd3.py``, ``config/nft.py``, ``config/base.py``; line numbers below are that
file's). Pure tensor maths; the step that samples with the *old* weights, scores, and trains on
the forward process is :class:`~diffalign.steps.nft.NFTStep` (``step = "nft"``), its settings the
``rollout:`` block (:class:`~diffalign.rollout_settings.OnlineRollout`).

DiffusionNFT needs no likelihood of the sampler: it trains on clean samples ``x0`` re-noised with a
fresh ``t`` and noise, as offline denoising does, and turns each sample's reward into a
probability ``r`` that it is "optimal".

**Advantages → optimality probability** (:func:`optimality_probability`; L750–786, L910–929).
Advantages are Flow-GRPO's (per prompt, or ``(R − mean)/(std + 1e-4)`` over the whole collection:
:func:`diffalign.objectives.grpo.combined_advantages`), clipped to ``±A`` (``adv_clip_max`` = 5),
then changed by ``adv_mode``: ``all`` (as is), ``positive_only`` (clamped to ``[0, A]``),
``negative_only`` (``[−A, 0]``), ``one_only`` (1 where positive, else 0), ``binary`` (its sign);
finally ``r = clip(A'/A/2 + ½, 0, 1)``.

**Implicit policies** (L930–937): with ``v_θ`` the trained prediction and ``v_old`` the old
weights' (no gradient), ``v₊ = β·v_θ + (1 − β)·v_old`` and ``v₋ = (1 + β)·v_old − β·v_θ``.

**Loss** (L939–962), per sample, with ``x̂₀(v) = x_t − t·v`` on SD3's flow::

    w±   = max(mean |x̂₀(v±) − x0|, 1e-5)              (float64, no gradient: the adaptive weight)
    L±   = mean (x̂₀(v±) − x0)² / w±
    loss = A · mean_samples (r·L₊ + (1 − r)·L₋) / β
         + β_kl · mean_samples mean (v_θ − v_ref)²     (KL to the LoRA-disabled reference, L966–972)

**The x₀-space form, for every parameterisation.** ``x̂₀`` is affine in the prediction at a given
``(x_t, t)``: ``x_t − t·v`` (flow), ``(x_t − s_t·ε̂)/a_t`` (ε), ``a_t·x_t − s_t·v̂`` (v-prediction),
each ``x̂₀(p) = c₀ + c₁·p`` with the same ``c₀, c₁`` for every prediction. A mix whose weights sum
to one maps through it term by term: ``x̂₀(Σ λᵢ pᵢ) = Σ λᵢ x̂₀(pᵢ)`` when ``Σ λᵢ = 1``, and both
mixes above have that (``β + (1 − β)`` and ``(1 + β) − β``). So :func:`nft_loss` takes the x₀
predictions of the policy and of the old weights, ``x̂₀₊ = β·x̂₀_θ + (1 − β)·x̂₀_old`` and
``x̂₀₋ = (1 + β)·x̂₀_old − β·x̂₀_θ``: on a flow it is the official loss (tested against the
official ``v`` form), and on ε and v UNets it is the same objective, each family giving its own
``x̂₀`` (``split_prediction``). The KL stays in the family's own prediction space, as officially.

**The old weights** (L169–189, L576–579, L1034–1039): a second LoRA adapter, a copy of the trained
one at the start, which samples every collection; after the updates of a collection it moves
toward the trained weights, ``old ← d·old + (1 − d)·θ``, with ``d`` from :func:`old_decay`
(``decay_type`` 0: 0, a copy; 1: ``min(0.001·u, 0.5)``; 2: 0 for 75 updates, then
``min(0.0075·(u − 75), 0.999)``, ``u`` the updates taken so far).

Official SD3.5-M defaults (``config/nft.py``): 512 px, 10 sampling steps (``dpm2``, deterministic,
guidance 1.0: CFG-free), 24 images per prompt, 48 prompts per collection, β = 1.0 (0.1 for OCR and
the multi-reward config, 25 steps there), ``decay_type`` 1 (2 for OCR), ``adv_clip_max`` 5,
``train.beta`` (β_kl) 1e-4, LoRA r 32 α 64 on the attention projections, lr 3e-4, AdamW weight
decay 1e-4, each sample trained at ⌊0.99·10⌋ = 9 of its sampling times in shuffled order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterable, Literal

import torch
from torch import Tensor

from .base import Objective, ObjectiveOutput, PreferenceTerms, add_kl, require_terms, weighted_mean
from .grpo import ADVANTAGE_STDS, combined_advantages

ADV_MODES = ("all", "positive_only", "negative_only", "one_only", "binary")
DECAY_TYPES = (0, 1, 2)


def optimality_probability(advantages: Tensor, adv_clip: float = 5.0, mode: str = "all") -> Tensor:
    """``advantages [N]`` → ``r [N]`` in ``[0, 1]`` (module docstring; L910–929)."""
    if mode not in ADV_MODES:
        raise ValueError(f"adv_mode must be one of {', '.join(ADV_MODES)}, got {mode!r}")
    a = advantages.clamp(-adv_clip, adv_clip)
    if mode == "positive_only":
        a = a.clamp(0, adv_clip)
    elif mode == "negative_only":
        a = a.clamp(-adv_clip, 0)
    elif mode == "one_only":
        a = (a > 0).to(a.dtype)
    elif mode == "binary":
        a = torch.sign(a)
    return (a / adv_clip / 2.0 + 0.5).clamp(0, 1)


def old_decay(updates: int, decay_type: int) -> float:
    """The soft update's ``d`` after ``updates`` optimiser updates (``return_decay``, L169–189)."""
    if decay_type not in DECAY_TYPES:
        raise ValueError(f"decay_type must be one of {DECAY_TYPES}, got {decay_type!r}")
    flat, rate, cap = {0: (0, 0.0, 0.0), 1: (0, 0.001, 0.5), 2: (75, 0.0075, 0.999)}[decay_type]
    return 0.0 if updates < flat else min((updates - flat) * rate, cap)


@torch.no_grad()
def soft_update_(old: Iterable[Tensor], trained: Iterable[Tensor], decay: float) -> None:
    """In place, ``old ← decay·old + (1 − decay)·trained`` for each pair of tensors (L1036–1039)."""
    old, trained = list(old), list(trained)
    if len(old) != len(trained):
        raise ValueError(f"{len(old)} old and {len(trained)} trained tensors: each old tensor needs its trained one")
    for o, n in zip(old, trained):
        o.copy_(o * decay + n * (1.0 - decay))


def _adaptive_error(x0_hat: Tensor, x0: Tensor) -> Tensor:
    """``[N]``: ``mean (x̂₀ − x0)² / w`` with ``w = max(mean |x̂₀ − x0|, 1e-5)`` in float64, no gradient."""
    dims = tuple(range(1, x0.ndim))
    with torch.no_grad():
        w = (x0_hat.double() - x0.double()).abs().mean(dim=dims, keepdim=True).clip(min=1e-5)
    return ((x0_hat - x0) ** 2 / w).mean(dim=dims)


def nft_loss(policy_x0: Tensor, old_x0: Tensor, x0: Tensor, r: Tensor, beta: float, adv_clip: float = 5.0,
             weights: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """DiffusionNFT's policy loss in x₀ space (module docstring).

    Args:
        policy_x0: ``[N, *latent]`` x̂₀ of the trained weights' prediction (with gradient).
        old_x0: ``[N, *latent]`` x̂₀ of the old weights' prediction at the same ``x_t`` (no gradient).
        x0: ``[N, *latent]`` the clean samples.
        r: ``[N]`` optimality probabilities (:func:`optimality_probability`).
        weights: ``[N]`` (0: padding), or ``None``.

    Returns:
        The scalar loss (float64, as the official weights make it) and detached metrics.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    old_x0 = old_x0.detach()
    positive = beta * policy_x0 + (1 - beta) * old_x0
    negative = (1 + beta) * old_x0 - beta * policy_x0
    r = r.to(x0.device).double().reshape(-1)
    per_sample = (r * _adaptive_error(positive, x0) + (1 - r) * _adaptive_error(negative, x0)) / beta
    loss = weighted_mean(per_sample * adv_clip, weights)
    with torch.no_grad():
        dims = tuple(range(1, x0.ndim))
        metrics = {"old_deviate_x0": ((policy_x0 - old_x0) ** 2).mean(dim=dims).mean(), "r_mean": r.mean()}
    return loss, metrics


def prediction_kl(policy_pred: Tensor, ref_pred: Tensor) -> Tensor:
    """``[N]``: ``mean (p_θ − p_ref)²`` per sample, in the family's prediction space (L966–968)."""
    return ((policy_pred - ref_pred.detach()) ** 2).mean(dim=tuple(range(1, policy_pred.ndim)))


@dataclass
class DiffusionNFTConfig:
    """``beta``: β, how far the implicit policies lie from the old weights (1.0; 0.1 for OCR and
    multi-reward); ``kl_beta``: the KL to the reference (``train.beta``, 1e-4; 0 loads no
    reference); ``adv_clip``: ``A`` (``adv_clip_max``, 5); ``adv_mode``: :data:`ADV_MODES` (``all``);
    ``decay_type``: the old weights' schedule (:func:`old_decay`; 1, 2 for OCR);
    ``advantage_std``: ``global`` (``sample.global_std``, the official default) or ``group``;
    ``per_reward_advantages``: as :class:`~diffalign.objectives.grpo.GRPOConfig`'s (the official
    code takes the advantage of the rewards' weighted sum)."""

    beta: float = 1.0
    kl_beta: float = 1e-4
    adv_clip: float = 5.0
    adv_mode: Literal["all", "positive_only", "negative_only", "one_only", "binary"] = "all"
    decay_type: int = 1
    advantage_std: Literal["global", "group"] = "global"
    per_reward_advantages: bool = False

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0 (the loss divides by it), got {self.beta}")
        if not self.kl_beta >= 0:
            raise ValueError(f"kl_beta must be ≥ 0, got {self.kl_beta}")
        if not self.adv_clip > 0:
            raise ValueError(f"adv_clip must be > 0, got {self.adv_clip}")
        if self.adv_mode not in ADV_MODES:
            raise ValueError(f"adv_mode must be one of {', '.join(ADV_MODES)}, got {self.adv_mode!r}")
        if self.decay_type not in DECAY_TYPES:
            raise ValueError(f"decay_type must be one of {DECAY_TYPES}, got {self.decay_type!r}")
        if self.advantage_std not in ADVANTAGE_STDS:
            raise ValueError(f"advantage_std must be one of {', '.join(ADVANTAGE_STDS)}, got {self.advantage_std!r}")


class DiffusionNFT(Objective):
    """DiffusionNFT (module docstring). Terms, one row per (image, trained time) of a micro-batch:
    ``policy_x0``, ``old_x0``, ``x0`` ``[N, *latent]``, ``advantages [N, 1]``, ``kl [N, 1]``
    (when ``kl_beta > 0``), ``weights [N]`` (0: padding)."""

    name = "diffusion_nft"
    Config = DiffusionNFTConfig
    min_group_size = 0  # samples its own images: any dataset's prompts, prompt-only ones too
    max_group_size = None
    per_image = "x0"
    step = "nft"
    step_defaults: ClassVar[dict] = {"guidance": 1.0}  # CFG-free sampling (config/nft.py L62)

    @property
    def needs_reference(self) -> bool:  # type: ignore[override]
        """The reference runs only for the KL term: ``kl_beta = 0`` loads none."""
        return self.config.kl_beta > 0

    def advantages(self, rewards: dict[str, Tensor], weights: dict[str, float]) -> tuple[Tensor, Tensor]:
        """Flow-GRPO's (:func:`~diffalign.objectives.grpo.combined_advantages`), as the official
        code computes them (L750–786)."""
        config = self.config
        return combined_advantages(rewards, weights, config.advantage_std, config.per_reward_advantages)

    def loss(self, terms: PreferenceTerms) -> ObjectiveOutput:
        config = self.config
        require_terms(self.name, terms, ("policy_x0", "old_x0", "x0", "advantages"), "nft")
        r = optimality_probability(terms.advantages.flatten(), config.adv_clip, config.adv_mode)
        loss, metrics = nft_loss(terms.policy_x0, terms.old_x0, terms.x0, r, config.beta, config.adv_clip,
                                 terms.weights)
        loss = add_kl(self.name, loss, metrics, terms, config.kl_beta, "kl_beta")
        return ObjectiveOutput(loss, {"loss": loss.detach(), **metrics})


__all__ = ["ADV_MODES", "DECAY_TYPES", "DiffusionNFT", "DiffusionNFTConfig", "nft_loss", "old_decay",
           "optimality_probability", "prediction_kl", "soft_update_"]
