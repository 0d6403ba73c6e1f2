"""Flow-GRPO's maths: "Flow-GRPO: Training Flow Matching Models via Online RL".

Liu et al., 2025, https://arxiv.org/abs/2505.05470 (official code: yifan123/flow_grpo @ac4c86e,
``scripts/train_sd3.py``, ``flow_grpo/stat_tracking.py``). Pure tensor maths over per-sample
rewards and per-(sample, step) log-probabilities; the step that collects them (sampling with the
log-probabilities kept, scoring, several updates per collection) is
:class:`~diffalign.steps.online.OnlineStep`, and its settings are the ``rollout:`` block
(:class:`~diffalign.step_settings.OnlineRollout`). :class:`GRPO` is ``grpo``; DanceGRPO is
``dance_grpo`` (:class:`DanceGRPO`), the same loss with its own defaults.

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
fraction ``mean(|ρ − 1| > ε)``, the ratio's mean and spread; the step adds the collection's
reward mean and std (of the weighted sum, and each reward's mean) and the share of zero-spread
prompts (``online/...``).

Audit against the official code (Flow-GRPO @ac4c86e, ``scripts/train_sd3.py``; DanceGRPO @15cc71d,
``fastvideo/train_grpo_flux.py`` F, ``train_grpo_hunyuan.py`` H, ``train_grpo_wan_2_1.py`` W):

- Sampler: Flow-GRPO's SDE (``sd3_sde_with_logprob.py`` L47–68), CPS, DanceGRPO's ``flux_step``
  (F L131–170) as noise rules (:mod:`diffalign.noise_rules`); log-probabilities recorded at
  sampling in fp32, the ratio 1 before any update on every tiny family (tests). Matched.
- Trained steps: the first ⌊0.99·S⌋ (L345, L864); DanceGRPO a fresh random ``int((S−1)·0.6)`` of
  the first S − 1 steps per image (F L512–570). Matched (``rollout.trained``).
- Advantages: above; DanceGRPO normalises per group with torch's unbiased std and eps 1e-8
  (F L532–548). Deviation: ``dance_grpo`` uses the population std and 1e-4 (with K = 12 the
  advantages are √(12/11) = 1.04× DanceGRPO's).
- Zero-advantage images: officially dropped, then some put back so the count divides the
  batches (L797–817); here they are dropped, and a process left with fewer images than
  micro-batches trains a weight-0 stand-in (:mod:`diffalign.steps.buffer`): each process runs the
  same backwards either way; the official micro-batch sizes differ slightly.
- Updates: micro-batches of images at one trained step, in sample-batch then step order, split in
  2 updates per collection (accumulation ``batches/2 × steps``, L360). Matched; DanceGRPO steps
  every ``gradient_accumulation_steps`` rollouts (F L609–613): ``updates_per_collection`` sets it.
- Guidance while training: recomputed, the unconditional half detached on SD3 (L189–190),
  both halves trained on Wan and by DanceGRPO (W L238–248). Matched (``rollout.detach_uncond``).
- Shared start noise: DanceGRPO draws one noise for all of a rank's rollouts (F L333–338, so two
  prompts on one rank share it); here one per prompt (``rollout.shared_noise``). Stated.
- Reward input: Flow-GRPO scores the decoded final latent; DanceGRPO the last step's x̂0 (F L254).
  Here the final latent for both (with DanceGRPO's SDE the last step onto σ = 0 keeps noise
  η·√σ₁, so its images carry that noise). Stated.
- Best/worst of K (H L394–409): advantages over all K first, then the best and worst n kept.
  Matched (``rollout.keep_best_worst``). VQ/MQ: one clipped surrogate per reward, summed with its
  weight (H L450–477); here the per-reward advantages are summed first and one surrogate taken —
  equal while the ratio is unclipped, different under the clip. Stated.
- Not built: EMA of the weights (Flow-GRPO's 0.9 every 8 updates, L445), asynchronous reward
  servers, and the pooling of a prompt drawn twice in one collection (the official tracker,
  ``stat_tracking.py`` L11–31, groups rewards by prompt text; here each draw is its own group).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from .base import Objective, ObjectiveOutput, PreferenceTerms, add_kl, require_terms, weighted_mean

ADVANTAGE_STDS = ("global", "group")


@dataclass
class GRPOConfig:
    """``beta``: KL strength (official 0.04 GenEval/OCR, 0.01 PickScore; 0 skips the reference's
    forward); ``clip_range``: ε of the ratio clip (SD3 1e-4, Wan 1e-3); ``adv_clip``: advantages
    clipped to ±this (5); ``advantage_std``: ``global`` (SD3) or ``group`` (Wan);
    ``per_reward_advantages``: with several rewards, one advantage per reward, summed (DanceGRPO's
    VQ/MQ), instead of the advantage of their weighted sum (Flow-GRPO)."""

    beta: float = 0.04
    clip_range: float = 1e-4
    adv_clip: float = 5.0
    advantage_std: Literal["global", "group"] = "global"
    per_reward_advantages: bool = False

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


def combined_advantages(rewards: dict[str, Tensor], weights: dict[str, float], std: str = "global",
                        per_reward: bool = False) -> tuple[Tensor, Tensor]:
    """``rewards``: each reward's ``[P, K]`` raw scores → ``(advantages [P, K], zero_spread [P])``:
    the advantages of the weighted sum ``Σ w·r`` (Flow-GRPO), or with ``per_reward`` the sum of
    each reward's own advantages times its weight (DanceGRPO's VQ/MQ); a group is zero-spread
    when its advantages are all 0."""
    if not per_reward:
        total = sum(weights[name] * scores.double() for name, scores in rewards.items())
        return group_advantages(total, std)
    advantages = sum(weights[name] * group_advantages(scores, std)[0] for name, scores in rewards.items())
    return advantages, advantages.eq(0).all(dim=1)


def clipped_surrogate(logp: Tensor, old_logp: Tensor, advantages: Tensor, clip_range: float,
                      adv_clip: float = 5.0, weights: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate over ``N`` (sample, step) terms: ``logp [N]`` (with gradient),
    ``old_logp``, ``advantages [N]``, optional ``weights [N]`` (0: padding). Returns the (weighted)
    mean loss and the detached ``approx_kl``, ``clipfrac``, ``ratio_mean``, ``ratio_std``."""
    adv = advantages.to(logp).clamp(-adv_clip, adv_clip)
    ratio = torch.exp(logp - old_logp.to(logp))
    loss = weighted_mean(torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_range, 1 + clip_range)), weights)
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


class GRPO(Objective):
    """Flow-GRPO (module docstring). Terms, one row per (image, trained step) of a micro-batch:
    ``policy_logp [N, 1]`` (with gradient), ``old_logp [N, 1]`` (recorded at sampling),
    ``advantages [N, 1]``, ``kl [N, 1]`` (when β > 0), ``t [N]``, ``weights [N]`` (0: padding, so
    every process runs the same backwards)."""

    name = "grpo"
    Config = GRPOConfig
    min_group_size = 0  # trains on a dataset's prompts only: any K, prompt-only datasets too
    max_group_size = None
    per_image = "logp"
    step = "online"
    step_defaults: ClassVar[dict] = {}

    @property
    def needs_reference(self) -> bool:  # type: ignore[override]
        """The reference runs only for the KL term: β = 0 loads none."""
        return self.config.beta > 0

    def advantages(self, rewards: dict[str, Tensor], weights: dict[str, float]) -> tuple[Tensor, Tensor]:
        """:func:`combined_advantages` with this objective's std and per-reward choice."""
        config = self.config
        return combined_advantages(rewards, weights, config.advantage_std, config.per_reward_advantages)

    def loss(self, terms: PreferenceTerms) -> ObjectiveOutput:
        config = self.config
        require_terms(self.name, terms, ("policy_logp", "old_logp", "advantages"), "online")
        logp = terms.policy_logp.float().flatten()
        loss, metrics = clipped_surrogate(logp, terms.old_logp.flatten(), terms.advantages.flatten(),
                                          config.clip_range, config.adv_clip, terms.weights)
        loss = add_kl(self.name, loss, metrics, terms, config.beta, "beta")
        return ObjectiveOutput(loss, {"loss": loss.detach(), **metrics})


@dataclass
class DanceGRPOConfig(GRPOConfig):
    """DanceGRPO's defaults (XueZeyue/DanceGRPO @15cc71d): no KL and no reference, advantages
    normalised per group, one advantage per reward summed; the clip range of its scripts."""

    beta: float = 0.0
    advantage_std: Literal["global", "group"] = "group"
    per_reward_advantages: bool = True


class DanceGRPO(GRPO):
    """DanceGRPO: "DanceGRPO: Unleashing GRPO on Visual Generation", Xue et al., 2025,
    https://arxiv.org/abs/2505.07818. The loss is :class:`GRPO`'s clipped surrogate with β = 0;
    what differs is the sampling, set by ``step_defaults``: its SDE step (``dance_sde``, η 0.3),
    one start noise per prompt, a random 60 % of each image's steps trained."""

    name = "dance_grpo"
    Config = DanceGRPOConfig
    step_defaults: ClassVar[dict] = {"noise": "dance_sde", "shared_noise": True, "trained": "random",
                                     "train_fraction": 0.6, "detach_uncond": False}


__all__ = ["ADVANTAGE_STDS", "DanceGRPO", "DanceGRPOConfig", "GRPO", "GRPOConfig", "clipped_surrogate",
           "combined_advantages", "group_advantages", "step_kl"]
