"""Flow-GRPO's maths: "Flow-GRPO: Training Flow Matching Models via Online RL".

Liu et al., 2025, https://arxiv.org/abs/2505.05470 (official code: yifan123/flow_grpo @ac4c86e,
``scripts/train_sd3.py``, ``flow_grpo/stat_tracking.py``). Pure tensor maths over per-sample
rewards and per-(sample, step) log-probabilities; the step that collects them (sampling with
the log-probabilities kept, scoring, several updates per collection) is not built yet, so this
module is not registered as an objective: it lands with that step (issue 36).

**Advantages** (:func:`group_advantages`; ``stat_tracking.py`` L11–31; without per-prompt tracking ``train_sd3.py`` L782):
for the ``K`` samples of each prompt, ``A = (r − mean_group)/(std + 1e-4)``, with the std the
population std (numpy's ``np.std``) over **all** gathered rewards (``global_std``, the SD3
configs) or over the group's (Wan). A group whose rewards are all equal has no signal: its
advantages are 0 and the official code drops those samples (L797–817); here they are 0 exactly
(the group mean of equal floats need not equal them to the last bit) and counted.

**Policy loss** (:func:`clipped_surrogate`; L881–893), per (sample, trained step)::

    A'    = clip(A, −adv_clip, adv_clip)                    (adv_clip = 5)
    ρ     = exp(log p_θ(x_{s+1} | x_s) − log p_old)          (p_old recorded at sampling, never recomputed)
    loss  = mean max(−A'·ρ, −A'·clip(ρ, 1 − ε, 1 + ε))      (ε = clip_range, 1e-4 on SD3)

**KL** (:func:`step_kl`; L895–897): ``mean_elements((μ_θ − μ_ref)²)/(2·σ_rule²)``, the step means
under the policy and the reference (LoRA disabled), with the rule's ``std_dev_t``: for
Flow-GRPO's SDE the coefficient ``g = a·√(σ/(1 − σ))`` (not the step std ``g·√(−Δ)``, so the term
is the Gaussian KL of the step × Δ), for CPS its step std. Added as ``β·mean(kl)`` (β 0.04
GenEval/OCR, 0.01 PickScore; 0 in the fast configs).

Logged per update, as officially: ``approx_kl = ½·mean((log p_θ − log p_old)²)``, the clip
fraction ``mean(|ρ − 1| > ε)``, the ratio's mean and spread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

ADVANTAGE_STDS = ("global", "group")


@dataclass
class GRPOConfig:
    """``beta``: KL strength (official 0.04 GenEval/OCR, 0.01 PickScore); ``clip_range``: ε of the
    ratio clip (SD3 1e-4, Wan 1e-3); ``adv_clip``: advantages clipped to ±this (5);
    ``advantage_std``: ``global`` (SD3) or ``group`` (Wan)."""

    beta: float = 0.04
    clip_range: float = 1e-4
    adv_clip: float = 5.0
    advantage_std: Literal["global", "group"] = "global"

    def __post_init__(self):
        if not self.beta >= 0:
            raise ValueError(f"beta must be ≥ 0, got {self.beta}")
        if not 0 < self.clip_range < 1:
            raise ValueError(f"clip_range must be in (0, 1), got {self.clip_range}")
        if not self.adv_clip > 0:
            raise ValueError(f"adv_clip must be > 0, got {self.adv_clip}")
        if self.advantage_std not in ADVANTAGE_STDS:
            raise ValueError(f"advantage_std must be one of {', '.join(ADVANTAGE_STDS)}, got {self.advantage_std!r}")


def group_advantages(rewards: Tensor, std: str = "global", eps: float = 1e-4) -> tuple[Tensor, Tensor]:
    """``rewards [P, K]`` (``P`` prompts, ``K`` samples each, gathered from every process) →
    ``(advantages [P, K], zero_spread [P] bool)``; a zero-spread group's advantages are 0."""
    if std not in ADVANTAGE_STDS:
        raise ValueError(f"std must be one of {', '.join(ADVANTAGE_STDS)}, got {std!r}")
    rewards = rewards.double()
    spread = rewards.std(unbiased=False) if std == "global" else rewards.std(dim=1, unbiased=False, keepdim=True)
    advantages = (rewards - rewards.mean(dim=1, keepdim=True)) / (spread + eps)
    zero_spread = rewards.amax(dim=1) == rewards.amin(dim=1)
    return torch.where(zero_spread[:, None], torch.zeros_like(advantages), advantages), zero_spread


def clipped_surrogate(logp: Tensor, old_logp: Tensor, advantages: Tensor, clip_range: float,
                      adv_clip: float = 5.0) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate over ``N`` (sample, step) terms: ``logp [N]`` (with gradient),
    ``old_logp``, ``advantages [N]``. Returns the mean loss and the detached ``approx_kl``,
    ``clipfrac``, ``ratio_mean``, ``ratio_std``."""
    adv = advantages.to(logp).clamp(-adv_clip, adv_clip)
    ratio = torch.exp(logp - old_logp.to(logp))
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_range, 1 + clip_range)).mean()
    with torch.no_grad():
        metrics = {"approx_kl": 0.5 * ((logp - old_logp.to(logp)) ** 2).mean(),
                   "clipfrac": ((ratio - 1).abs() > clip_range).float().mean(),
                   "ratio_mean": ratio.mean(), "ratio_std": ratio.std(unbiased=False)}
    return loss, metrics


def step_kl(policy_mean: Tensor, ref_mean: Tensor, std_dev: Tensor) -> Tensor:
    """``[N]``: ``mean((μ_θ − μ_ref)²)/(2·std_dev²)`` over each step mean ``[N, *latent]``;
    ``std_dev [N]`` the rule's ``std_dev_t`` (module docstring)."""
    squared = ((policy_mean.float() - ref_mean.float()) ** 2).mean(dim=tuple(range(1, policy_mean.ndim)))
    return squared / (2 * std_dev.float().reshape(-1) ** 2)


__all__ = ["ADVANTAGE_STDS", "GRPOConfig", "clipped_surrogate", "group_advantages", "step_kl"]
