"""SPO: "Aesthetic Post-Training Diffusion Models from Generic Preferences with Step-by-step
Preference Optimization" (v1: "Step-aware Preference Optimization").

Liang et al., CVPR 2025, https://arxiv.org/abs/2406.04314 (official code: RockeyCoss/SPO,
``train_scripts/train_spo.py``, ``spo/custom_diffusers/ddim_with_logprob.py``).

The pairs are made while training (:class:`~diffalign.steps.spo.SPOStep`): from one shared
``x_t`` of the policy's own sampling chain, ``k`` candidates ``x_{t'}`` are drawn, scored by the
step-aware preference model, and the best and worst become ``(x^w, x^l)`` when their score gap
passes the threshold. The loss is DPO on the log-probability ratio of that one step::

    r = log p_θ(x' | x_t) − log p_ref(x' | x_t),   r̄ = clamp(r, log(1 − ε), log(1 + ε))
    loss = mean_pairs −log σ(β·(r̄_w − r̄_l))

with ``p`` the sampler's Gaussian step (:mod:`diffalign.solver`), both models guided as the
sampler is. β = 10, ε = 0.1 (both official launchers).

**Terms.** The step gives each candidate's log-probability ``−mean_d (x' − μ)²/(2σ²)``, less the
``log σ + ½ log 2π`` that policy and reference share at the same step, so
``r = policy_logp − ref_logp`` exactly: ``policy_logp``/``ref_logp`` ``[B, 2]``, column 0 the
winner. The logged ``err_w``/``err_l`` are their negatives.

**The clip and the reduction (SPO issue #19).** The official code averages the log-density over
latent elements, so ``r`` is ``D`` times smaller than the whole latent's log-ratio (D = 16,384 at
SD1.5's 64²·4) and the ratio clip ``[0.9, 1.1]`` almost never acts. Here too the default is the
mean (``rollout.log_prob_reduction: mean``): β = 10 was tuned on that scale, and with a sum the same β
would give margins thousands of times larger and a clip that always acts. The clip is kept as the
official code writes it, a hard clamp (no gradient outside the band); ``clip: 0`` switches it off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F

from .base import (Objective, ObjectiveOutput, PreferenceTerms, pair_metrics, prepare_terms, require_reference,
                   weighted_mean)

@dataclass
class SPOConfig:
    """Defaults: the official SD1.5 launcher (``spo_sd-v1-5_4k-prompts_num-sam-4_10ep_bs10.py``).
    How the pairs are sampled (steps, η, guidance, candidates, threshold, the step-aware model) is
    the step's: the config's ``rollout:`` block (:class:`~diffalign.step_settings.SPORollout`).

    Attributes:
        beta: DPO strength on the (mean-reduced) step log-ratio.
        clip: ε of the ratio clamp ``[1 − ε, 1 + ε]`` (0: none).
    """

    beta: float = 10.0
    clip: float = 0.1

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        if not 0 <= self.clip < 1:
            raise ValueError(f"clip must be in [0, 1), got {self.clip}")


class SPO(Objective):
    """SPO on pairs made from the policy's own steps; the dataset gives prompts only (any K)."""

    name = "spo"
    Config = SPOConfig
    needs_reference = True
    min_group_size = 1
    max_group_size = None
    per_image = "logp"
    step = "spo"

    def loss(self, terms: PreferenceTerms) -> ObjectiveOutput:
        """``terms.policy_logp``, ``terms.ref_logp``: ``[N, 2]`` step log-probabilities of the kept
        pairs (winner first). Returns the mean over the N pairs."""
        require_reference(self.name, terms, per_image="logp")
        terms = prepare_terms(self.name, terms, min_k=2, max_k=2, per_image="logp")
        ratio = terms.policy_logp - terms.ref_logp  # log p_θ − log p_ref, [N, 2]
        if self.config.clip > 0:
            ratio = ratio.clamp(math.log(1 - self.config.clip), math.log(1 + self.config.clip))
        margin = self.config.beta * (ratio[:, 0] - ratio[:, 1])
        loss = weighted_mean(F.softplus(-margin), terms.weights)
        metrics = pair_metrics(-terms.policy_logp, -terms.ref_logp, margin, loss)
        return ObjectiveOutput(loss, metrics)


__all__ = ["SPO", "SPOConfig"]
