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
