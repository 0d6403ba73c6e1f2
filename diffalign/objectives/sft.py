"""SFT on the preferred image: the supervised baseline of Diffusion-DPO.

"Diffusion Model Alignment Using Direct Preference Optimization", Wallace et al., CVPR 2024,
https://arxiv.org/abs/2311.12908, §5.5 (official code: SalesforceAIResearch/DiffusionDPO
``train.py --sft``, plain denoising loss on the chosen image of each pair).

Loss, per group of K ≥ 1 images (column 0 = preferred)::

    loss = mean_B err_θ(x_0)

No reference model and no parameters. The other images are only logged. With K = 1 (an expert
dataset, ``diffalign build experts``) it is the "SFT on experts" baseline of Diffusion-DRO (Wu et
al., NeurIPS 2025, Table 3), trained on the same images as ``diffusion_dro``.

Metrics: ``loss``, ``err_w`` (mean error of column 0) and, for K ≥ 2, ``err_l`` (mean error of
columns 1..K−1).
``implicit_acc`` and ``margin`` are omitted: SFT has no preference margin, and a reference-free
comparison of raw errors across different images would not measure preference.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Objective, ObjectiveOutput, PreferenceTerms, prepare_terms


@dataclass
class SFTConfig:
    """SFT has no parameters."""


class SFT(Objective):
    """Denoising loss on the preferred image of each group (any ``K ≥ 1``)."""

    name = "sft"
    Config = SFTConfig
    needs_reference = False
    min_group_size = 1
    max_group_size = None

    def loss(self, terms: PreferenceTerms) -> ObjectiveOutput:
        """``terms.policy_err``: ``[B, K]``; only column 0 enters the loss; ``ref_err`` is ignored."""
        terms = prepare_terms(self.name, terms, min_k=1)
        err = terms.policy_err
        loss = err[:, 0].mean()
        metrics = {"loss": loss.detach(), "err_w": err[:, 0].mean().detach()}
        if err.shape[1] > 1:
            metrics["err_l"] = err[:, 1:].mean().detach()
        return ObjectiveOutput(loss, metrics)


__all__ = ["SFT", "SFTConfig"]
