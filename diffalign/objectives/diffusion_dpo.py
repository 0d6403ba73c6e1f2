"""Diffusion-DPO: "Diffusion Model Alignment Using Direct Preference Optimization".

Wallace et al., CVPR 2024, https://arxiv.org/abs/2311.12908 (official code:
SalesforceAIResearch/DiffusionDPO ``train.py``).

Loss, per pair (column 0 = preferred w, column 1 = rejected l)::

    margin = −(β/2)·[(err_θ(w) − err_θ(l)) − (err_ref(w) − err_ref(l))],   loss = mean_B −log σ(margin)

Defaults: β = 5000, the value of the official SD1.5 and SDXL launchers (the paper reports
β ∈ [2000, 5000] as good). The ½ follows the official code (``−0.5·β``, from the noise-aware
derivation, paper Eq. 46); diffusers' ``train_diffusion_dpo.py`` writes the same loss without the
½ and with β = 2500.

β is tied to the error reduction: ``err`` is the mean over the C·H·W latent elements, as in every
official script. A per-image *sum* would need β divided by C·H·W (the paper's pseudo-code uses a
sum and no ½; do not copy its β into this form). At θ = ref the margin is 0 and the loss is
exactly ln 2 per pair.

Option: ``loss_type="hinge"`` gives ``relu(1 − margin)``, diffusers' hinge loss in this β
convention. Their ``ipo`` branch reads an argument that does not exist, so its intended scale
is unknown and it is not offered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Objective, ObjectiveOutput, PreferenceTerms, pair_metrics, prepare_terms, require_reference

LOSS_TYPES = ("sigmoid", "hinge")


@dataclass
class DiffusionDPOConfig:
    """``beta``: KL strength for mean-over-elements errors; ``loss_type``: ``sigmoid`` (paper) or ``hinge``."""

    beta: float = 5000.0
    loss_type: Literal["sigmoid", "hinge"] = "sigmoid"

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {self.loss_type!r}")


def dpo_margin(policy_err: Tensor, ref_err: Tensor, beta: float) -> Tensor:
    """``[B]`` margin ``−(β/2)·(d_θ − d_ref)`` of pairs ``[B, 2]`` (column 0 preferred)."""
    d_policy = policy_err[:, 0] - policy_err[:, 1]
    d_ref = ref_err[:, 0] - ref_err[:, 1]
    return -0.5 * beta * (d_policy - d_ref)


def dpo_pair_loss(margin: Tensor, loss_type: str = "sigmoid") -> Tensor:
    """Per-pair loss ``[B]``: ``−log σ(margin)`` (``sigmoid``) or ``relu(1 − margin)`` (``hinge``)."""
    if loss_type == "sigmoid":
        return F.softplus(-margin)
    if loss_type == "hinge":
        return torch.relu(1 - margin)
    raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")


class DiffusionDPO(Objective):
    """Diffusion-DPO on pairs (``K = 2``); needs the reference model's errors."""

    name = "diffusion_dpo"
    Config = DiffusionDPOConfig
    needs_reference = True
    min_group_size = 2
    max_group_size = 2

    def loss(self, terms: PreferenceTerms) -> ObjectiveOutput:
        """``terms.policy_err``, ``terms.ref_err``: ``[B, 2]``. Returns the mean over the B pairs."""
        require_reference(self.name, terms)
        terms = prepare_terms(self.name, terms, min_k=2, max_k=2)
        margin = dpo_margin(terms.policy_err, terms.ref_err, self.config.beta)
        loss = dpo_pair_loss(margin, self.config.loss_type).mean()
        return ObjectiveOutput(loss, pair_metrics(terms.policy_err, terms.ref_err, margin, loss))


__all__ = ["DiffusionDPO", "DiffusionDPOConfig", "dpo_margin", "dpo_pair_loss"]
