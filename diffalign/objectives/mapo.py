"""MaPO: "Margin-aware Preference Optimization for Aligning Diffusion Models without Reference".

Hong et al., arXiv 2406.06424 (AAAI-26), https://arxiv.org/abs/2406.06424 (official code:
mapo-t2i/mapo, ``utils.py compute_loss``). Reference-free: ``ref_err`` is ignored even if given.

Loss, per pair (column 0 = preferred w, column 1 = rejected l), with ``g(x) = x / (eˣ − 1)``::

    margin = T·(g(γ·err_w) − g(γ·err_l)),   loss = mean_B err_w − λ·mean_B log σ(margin)

The first term is SFT on the preferred image; the second pushes ``err_w`` below ``err_l``
(margin > 0 ⇔ err_w < err_l, since g decreases). Near zero ``g(x) ≈ 1 − x/2``, so the margin is
about ``−(T·γ/2)·(err_w − err_l)``: a reference-free DPO term of strength ≈ 250 at the defaults.

Defaults, from the official code (``args.py``): λ = ``beta_mapo`` = 0.1, γ = ``snr_value`` = 0.5,
T = ``margin_scale`` = 1000 (the code multiplies by ``num_train_timesteps``; with continuous time
it is only a scale, hence the name here). ``g`` is computed with ``expm1`` and a series near 0,
so ``g(0) = 1`` and its gradient stays finite.

Paper v2 parameterises differently: ``L = L_MSE(w) + β⁻¹·L_margin`` with a link ``∝ β·ℓ/(eˡ − 1)``
and per-task β from 8 (general preference) to 1024. Those β are not this ``beta_mapo``; the
paper gives no mapping. This module implements the code's form, which trained the released
checkpoint.

Audit against the official code (mapo-t2i/mapo@374b3d3: ``train.py``, ``utils.py``, ``args.py``,
``README.md``; SDXL only):

- Loss: ``compute_loss`` (utils.py L286–301): per-image mean over C·H·W (L287–288), the link on
  ``snr_value·err`` (L290–292), × ``num_train_timesteps`` inside ``logsigmoid`` (L296), ``mean(err_w)
  − beta_mapo·mean(logsigmoid)`` (L297, L300). Matched (``margin_scale`` = 1000 is that factor).
- No reference model is loaded. Matched.
- Timesteps and noise: ``randint(0, 1000)`` repeated for the pair, one ε shared (train.py L392,
  L396–398). Matched.
- Prediction type: ε, or v through ``get_velocity`` (train.py L428–433). Matched (the family's target).
- Prompt dropout: none (``tokenize_captions``, utils.py L145–157); diffalign default 0. Matched.
- Ties: ``--remove_ties`` (``type=bool``, default True, args.py L178) filters ``label_0 != label_1``
  (train.py L278–279); ``diffalign build pick-a-pic`` drops ties by default. Matched.
- Label noise: ``--label_noise_prob`` flips labels at random (args.py L163–168, utils.py L220–221; off
  by default); diffalign has no such option. Matched at the default.
- Flips: one flip per pair, p = 0.5, on unless ``--no_hflip`` (utils.py L232–233, args.py L98–102);
  diffalign ``data.random_flip`` off by default, one flip per group. Stated: ``data.random_flip: true``
  (uncached) matches.
- SDXL micro-conditioning: jpg_1 is resized to jpg_0's size, both are cropped together, and both get
  jpg_0's original size and crop as time ids (utils.py L202–211, L236–245, L277–283; train.py
  L405–409); diffalign gives each image its own original size and crop. Stated: the time ids differ
  when the two originals differ in size; no key reproduces the official ones.
- Optimiser and schedule: README run 8-bit AdamW, lr 1e-5 constant, no warm-up, 8 × 2 accumulation,
  2000 steps (README L44–59; ``args.py`` defaults lr 5e-4, warm-up 500, L172–196); the paper's
  general-preference run lr 1e-7 cosine, 2048 pairs per update; ``sd15/mapo.yaml`` follows the paper
  (8-bit AdamW, 1e-7 cosine, 32 × 8 per process). Stated: per-config choice; ``optim.*`` reproduces
  either.
- Gradient clipping: norm 1.0 on the trainable list (train.py L255, L442–443). Matched.
- EMA: none. Matched.
- Mixed precision: fp16 in the README runs, VAE kept in fp32 (train.py L180–181); the shipped configs
  use bf16 (the VAE in the load dtype, fp32 under full fine-tuning). Stated: ``mixed_precision: fp16``
  matches.
- Split: ``--dataset_split_name`` defaults to ``validation`` (args.py L37–42; the README says to pass
  ``train``); diffalign trains on whatever the builder wrote. Stated: build from the train split.
- Families: the official scripts train SDXL at 1024 px (args.py L84–86); diffalign any family.
  Stated: SD1.5/SD3 runs have no official counterpart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Objective, ObjectiveOutput, PreferenceTerms, pair_metrics, prepare_terms

_SERIES_BELOW = 1e-2
"""|x| under which g uses its Taylor series (x/expm1(x) loses precision in its gradient there)."""


@dataclass
class MaPOConfig:
    """``beta_mapo`` (λ): weight of the margin term; ``snr_value`` (γ): error scale inside g;
    ``margin_scale`` (T): scale of the margin."""

    beta_mapo: float = 0.1
    snr_value: float = 0.5
    margin_scale: float = 1000.0

    def __post_init__(self):
        if not self.beta_mapo >= 0:
            raise ValueError(f"beta_mapo must be ≥ 0, got {self.beta_mapo}")
        for key in ("snr_value", "margin_scale"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)}")


def mapo_link(x: Tensor) -> Tensor:
    """``g(x) = x / (eˣ − 1)`` elementwise, with ``g(0) = 1``; smooth and finite at 0.

    Uses ``1 − x/2 + x²/12 − x⁴/720`` for ``|x| < 1e-2`` (truncation error < 1e-14).
    """
    small = x.abs() < _SERIES_BELOW
    safe = torch.where(small, torch.ones_like(x), x)  # keeps the unused branch's gradient finite
    exact = safe / torch.expm1(safe)
    x2 = x * x
    series = 1 - x / 2 + x2 / 12 - x2 * x2 / 720
    return torch.where(small, series, exact)


class MaPO(Objective):
    """MaPO on pairs (``K = 2``); reference-free."""

    name = "mapo"
    Config = MaPOConfig
    needs_reference = False
    min_group_size = 2
    max_group_size = 2

    def loss(self, terms: PreferenceTerms) -> ObjectiveOutput:
        """``terms.policy_err``: ``[B, 2]``; ``terms.ref_err`` is ignored. Means over the B pairs."""
        terms = prepare_terms(self.name, terms, min_k=2, max_k=2)
        cfg = self.config
        err = terms.policy_err
        link = mapo_link(cfg.snr_value * err)
        margin = cfg.margin_scale * (link[:, 0] - link[:, 1])
        loss = err[:, 0].mean() - cfg.beta_mapo * F.logsigmoid(margin).mean()
        return ObjectiveOutput(loss, pair_metrics(err, None, margin, loss))


__all__ = ["MaPO", "MaPOConfig", "mapo_link"]
