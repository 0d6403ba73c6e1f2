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

Audit against the official code (SalesforceAIResearch/DiffusionDPO@5233e75, ``train.py --sft``; no
launcher ships for it. Diffusion-DRO's "SFT on experts" has no public script: its paper, Table 3):

- Which image: the labelled winner of each Pick-a-Pic pair (L830–835, asserting no ties); diffalign
  column 0, the best image of a group built best first. Matched.
- Forwards: only the chosen image is encoded and denoised; diffalign's denoising step runs all K images
  and logs the others. Stated: the same gradient at about K times the forward cost.
- Loss: ``F.mse_loss(..., reduction="mean")`` (L1120), the mean over pairs of per-image means.
  Matched.
- Timesteps and noise: ``randint(0, 1000)`` and a fresh ε per image (L1044). Matched.
- Prompt dropout: the launchers' default drops 20 % of captions here too (L352–354, L739, SDXL L396);
  diffalign default 0. Stated: ``prompt_dropout: 0.2`` matches.
- Flips: each image p = 0.5 (L760); diffalign ``data.random_flip`` off by default. Stated:
  ``data.random_flip: true`` matches.
- SDXL micro-conditioning: hard-coded ``(R, R, 0, 0, R, R)`` (L1077–1084); diffalign each image's
  original size and crop. Stated: as in Diffusion-DPO's audit.
- Optimiser, schedule, clipping: whatever the DPO launcher gives (AdamW, Adafactor on SDXL; lr
  ``1e-8 --scale_lr``; constant_with_warmup; norm 1.0, L662–682, L898–903, L1162–1164); ``sd15/sft.yaml``
  uses AdamW, lr 1e-6, 500 warm-up updates, norm 1.0. Stated: the paper trains SFT separately (§5.5)
  and the lr is a per-config choice.
- Reference model: none is used. Matched.
- EMA: none. Matched.
- Mixed precision: fp16 by default (L286); the shipped configs use bf16. Stated:
  ``mixed_precision: fp16`` matches.
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
