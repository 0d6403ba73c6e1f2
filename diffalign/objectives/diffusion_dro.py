"""Diffusion-DRO: "Ranking-based Preference Optimization for Diffusion Models from Implicit User
Feedback" (Diffusion Denoising Ranking Optimization).

Wu et al., NeurIPS 2025, https://arxiv.org/abs/2510.18353 (official code: basiclab/DiffusionDRO,
``train.py``).

Inverse RL with a max-margin condition: an offline expert image must out-score the policy's own
samples under the implicit reward ``β·log p_φ/p_ref``. With the forward process standing in for
the expert's trajectory and the DDPM weights set to 1 (paper App. D), that becomes a comparison
of reference-relative denoising errors at one shared ``t`` and prompt (paper Alg. 1, Eq. 15)::

    d_expert = err_φ(x̄_t; ε̄) − err_ref(x̄_t; ε̄)         x̄_t = add_noise(x̄0, ε̄, t)
    d_policy = err_φ(x_t; ε_θ) − err_ref(x_t; ε_θ)       x_t from a rollout of the snapshot θ
    loss = mean_B max(d_expert − d_policy + m, 0),  m = 0.001

``ε_θ`` is the rollout model's own prediction at its state (no guidance): the expert term is SFT
relative to the reference; the policy term pushes φ away from what the rollout model predicts on
its own samples; the margin stops pushing once the ranking holds. (The paper writes
``max(m', L_R − L_L)`` with ``m' = −0.001``, the same loss shifted by a constant.) The snapshot θ
is the policy, refreshed every ``M`` optimiser updates (M = 1 in every experiment).

For flow matching (SD3, not in the paper) the errors are in the family's own velocity target:
``ε̄ − x̄0`` for the expert and the snapshot's velocity for its states; the margin is in those
units (velocity errors are ``1/(1 − σ)²`` larger than ε errors at the same point), so re-tune it.

**Terms.** ``policy_err``/``ref_err`` ``[B, 2]``: column 0 the expert's error, column 1 the
rollout state's, each the mean over latent elements.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Objective, ObjectiveOutput, PreferenceTerms, pair_metrics, prepare_terms, require_reference


@dataclass
class DiffusionDROConfig:
    """Defaults: the paper (App. A.2) and the official ``train.py``. The rollouts (steps, guidance,
    perturbed times, snapshot refresh) are the step's: the config's ``rollout:`` block
    (:class:`~diffalign.step_settings.DRORollout`).

    Attributes:
        margin: ``m`` (code: ``--margin 0.001``).
    """

    margin: float = 0.001

    def __post_init__(self):
        if not self.margin >= 0:
            raise ValueError(f"margin must be ≥ 0, got {self.margin}")


def dro_gap(policy_err, ref_err):
    """``[B]`` ``d_expert − d_policy`` of ``[B, 2]`` errors (column 0 expert, column 1 rollout)."""
    relative = policy_err - ref_err
    return relative[:, 0] - relative[:, 1]


class DiffusionDRO(Objective):
    """Diffusion-DRO on prompts with one expert image each (``K = 1``)."""

    name = "diffusion_dro"
    Config = DiffusionDROConfig
    needs_reference = True
    min_group_size = 1
    max_group_size = 1
    step = "diffusion_dro"

    def loss(self, terms: PreferenceTerms) -> ObjectiveOutput:
        """``terms.policy_err``, ``terms.ref_err``: ``[B, 2]``. Returns the mean over B prompts."""
        require_reference(self.name, terms)
        terms = prepare_terms(self.name, terms, min_k=2, max_k=2)
        gap = dro_gap(terms.policy_err, terms.ref_err)
        loss = torch.relu(gap + self.config.margin).mean()
        # The "margin" metric is the ranking's: positive when the expert out-scores the rollout.
        return ObjectiveOutput(loss, pair_metrics(terms.policy_err, terms.ref_err, -gap, loss))


__all__ = ["DiffusionDRO", "DiffusionDROConfig", "dro_gap"]
