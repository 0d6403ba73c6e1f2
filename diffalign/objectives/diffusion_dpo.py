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

Audit against the official code (SalesforceAIResearch/DiffusionDPO@5233e75, ``train.py`` and
``launchers/``; diffusers' port huggingface/diffusers@58eb52c, ``train_diffusion_dpo[_sdxl].py``, where
it is the closer match):

- Prompt dropout: the caption of 20 % of pairs becomes "" (``--proportion_empty_prompts`` default 0.2,
  L352–354; one draw per pair, L739, SDXL L396; sd15.sh/sdxl.sh keep it, turbo.sh sets 0); diffalign
  default 0. Stated: ``prompt_dropout: 0.2`` matches.
- Timesteps: ``randint(0, 1000)`` per pair (L1044); diffalign uniform over the 1000 training indices
  (``model.time_sampling`` uniform for UNets). Matched.
- w and l share t and ε (L1053–1055); diffalign draws one t and one ε per group. Matched.
- Reduction: mean over C·H·W per image (L1125, L1137), mean over pairs (L1145). Matched.
- β: ``−0.5·β`` inside ``logsigmoid`` (L1142–1145), β = 5000 in every launcher. Matched (diffusers'
  SD1.5 port writes β without the ½, default 2500, L880).
- Reference: a second ``from_pretrained`` UNet (L584), left in eval mode and cast to the mixed-precision
  dtype (fp16, L939; SDXL also CPU-offloaded, L933–935); diffalign: under full fine-tuning a frozen copy
  in the ``mixed_precision`` dtype run in the policy's mode, under LoRA the policy with its adapters off
  (as diffusers' port, L860). Stated: the same weights; only rounding differs (families.reference).
- Ties: rows with ``label_0`` not in {0, 1} are dropped (L856–860); ``diffalign build pick-a-pic`` drops
  ties unless ``--keep-ties`` (a kept tie would train as "column 0 preferred": this loss reads no
  ranks). Matched.
- Order and flips: chosen image first (L783); each image flipped on its own with p = 0.5 (L760, on
  unless ``--no_hflip``); diffalign best first, ``data.random_flip`` off by default and one flip per
  group. Stated: ``data.random_flip: true`` (uncached) flips, as diffusers' SDXL port does, per pair.
- Resize and crop: shorter side to the resolution (bilinear), centre crop (L758–759). Matched.
- Latents: a sample of the VAE posterior (L1028). Matched.
- SDXL micro-conditioning: time ids hard-coded ``(R, R, 0, 0, R, R)`` for every image (L1077–1084);
  diffalign each image's recorded original size and crop (as diffusers' SDXL port, L975–985). Stated:
  no key reproduces the hard-coded ids; the official SDXL checkpoint was trained with them.
- Learning rate: ``1e-8 --scale_lr`` = 1e-8 × 128 × GPUs (L662–665; 2.048e-5 on sd15.sh's 16 GPUs);
  the shipped configs give 2.048e-5 absolute with 128 accumulation per process. Stated: matches on 16
  processes; scale ``optim.lr`` with the process count otherwise.
- Schedule: constant_with_warmup, warm-up 500 (SD1.5) / 200 (SDXL) updates, step counts × processes
  (L898–903); diffalign the same (``training.optim.make_scheduler``, shipped configs). Matched.
- Optimiser: AdamW (0.9, 0.999), weight decay 1e-2, eps 1e-8 (L676–682); ``--sdxl`` forces Adafactor
  (``clip_threshold`` 1, no relative step, L667–674). Stated: SD1.5 matched; diffalign has no Adafactor
  (the SDXL config uses 8-bit AdamW).
- Gradient clipping: norm 1.0 (L1162–1164; also under Adafactor, since the launchers do not pass
  ``--use_adafactor``). Matched (``optim.max_grad_norm: 1.0``).
- EMA: none. Matched.
- Mixed precision: fp16 by default (L286, the launchers keep it), fp32 master weights; the shipped
  configs use bf16. Stated: ``mixed_precision: fp16`` matches.
- SDXL VAE: sdxl.sh loads ``madebyollin/sdxl-vae-fp16-fix``; diffalign the checkpoint's own VAE.
  Stated: slightly different latents; there is no VAE key.
- Prediction type: ε is asserted (L1105); diffalign also trains v and flow models on their own target.
  Stated: an extension; the loss is unchanged.
- Not carried over, all off in the launchers: ``--noise_offset`` and ``--input_perturbation``
  (L1034–1040), ``--choice_model`` relabelling, SDXL-Turbo/refiner timestep rules (L1047–1051).
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
