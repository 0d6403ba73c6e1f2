"""RankDPO: "Scalable Ranked Preference Optimization for Text-to-Image Generation".

Karthik et al., ICCV 2025, https://arxiv.org/abs/2410.18013, Eq. 5–7 (no official code).

Per prompt with K images, ``s_i = err_θ(i) − err_ref(i)``; for every pair a ranked above b::

    loss = mean_prompts Σ_{a above b} w_ab · −log σ(−(β/2)·(s_a − s_b)),   w_ab = Δ_ab / Σ_pairs Δ

``Δ_ab = |G_a − G_b| · |1/D(τ_a) − 1/D(τ_b)|`` (Eq. 6) with gain ``G = 2^φ − 1`` and discount
``D(τ) = ln(1 + τ)``, τ the 1-based position in the true ranking. φ ∈ [0, 1]:

- from ``scores`` when given: min-max normalised per group, which maps any reward scale to
  [0, 1] (``minmax_scores=False`` takes scores already in [0, 1], such as the paper's Syn-Pic win
  fractions, as φ unchanged). τ then comes from the scores; ``ranks`` are unused;
- else from ``ranks``: ``φ = (K − τ)/(K − 1)``, i.e. ``(K − 1 − rank)/(K − 1)`` for untied ranks;
- neither: columns are best first without ties.

Ties share the best position they cover ("1224" ranking), so tied images have equal φ and τ and
their pair gets Δ = 0.

Metrics: ``implicit_acc`` and ``margin`` over the pairs with Δ > 0, unweighted (0 when there are
none); ``err_w``/``err_l`` and ``ref_gap`` compare the best and the worst image of each group.

Audit against the official code: not public / not fetched (no snapshot of snap-research/RankDPO
could be fetched), so against the paper, arXiv 2410.18013v2 (§3.3 Eq. 5–7, §4, App. A.6 Alg. 1–2).
The first two items are deliberate, so that K = 2 is *exactly* Diffusion-DPO with the same β:

- Weights: the paper sums the Δ-weighted pair losses (Eq. 7; Alg. 2 "sum pairwise losses"); diffalign
  normalises the weights to sum to 1 over each prompt's pairs, and prompts whose weights are all zero
  (all tied) contribute nothing and are left out of the mean. Stated: the loss scale per prompt
  changes (Σ Δ is at most about 6 × 0.82 at K = 4), so a paper lr or β would not carry over 1:1.
- β: the pair term is ``−log σ(−β·(s_i − s_j))`` (Eq. 7); here Diffusion-DPO's ½β. The paper states no
  β; the default β = 5000 is Diffusion-DPO's, for mean-over-elements errors. Stated: the paper's β
  is half of this one.
- Noise: Alg. 2 draws an ``ε_i`` per image (so does Eq. 5); diffalign shares one ε, with the one t,
  among a group's K images. Stated: the score differences lose the noise variance, as in Diffusion-DPO.
- Timesteps: one ``t ~ U(1, T)`` per prompt (Alg. 2). Matched (uniform, shared by the group).
- Reduction: ``‖·‖²₂``, a sum over latent elements (Eq. 5); here the mean over C·H·W. Stated: β scales
  with the reduction (a sum would need β / (C·H·W)).
- Gain, discount, ranking: ``G = 2^φ − 1``, ``D = log(1 + τ)``, τ the true ranking by φ (Eq. 6, Alg. 2;
  Fig. 2's caption mentions the model's predicted ranking, the equations do not use it). Matched
  (natural log; another base only rescales every Δ).
- Ties: equal φ give Δ = 0 whatever their order (Eq. 6); tied images here share the best position they
  cover, where the paper's sort breaks the tie. Stated: only other pairs' discounts can differ.
- φ: Syn-Pic's fraction of wins over 5 rewards (Alg. 1); here ``scores`` min-max normalised per group
  unless ``minmax_scores: false`` (φ ∈ [0, 1] taken as given, e.g. the paper's fractions). Stated.
- Reference: a frozen ε_ref (Eq. 5); here a frozen copy, or the policy with its LoRA adapters off.
  Matched.
- Not in the paper, so chosen by the configs after Diffusion-DPO: lr, optimiser, warm-up, gradient
  clipping, EMA, precision, LoRA or full fine-tuning, prompt dropout (diffalign default 0), SDXL
  micro-conditioning. Stated. The paper gives 8 A100s, 16 h, batch 1024, 400 steps (§4);
  ``max_steps: 400`` follows it.
- SD3: the paper trains SD3-Medium but writes only the ε form; here the family's velocity errors.
  Stated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Objective, ObjectiveOutput, PreferenceTerms, prepare_terms, require_reference


@dataclass
class RankDPOConfig:
    """``beta``: strength of the pairwise term (½β convention, mean-over-elements errors);
    ``minmax_scores``: φ = per-group min-max of ``scores`` (else the scores themselves, in [0, 1])."""

    beta: float = 5000.0
    minmax_scores: bool = True

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"beta must be positive, got {self.beta}")


def gains_and_positions(ranks: Tensor | None, scores: Tensor | None, batch: int, k: int, device=None,
                        dtype=torch.float32, minmax: bool = True) -> tuple[Tensor, Tensor]:
    """``φ [B, K]`` in [0, 1] and ``τ [B, K]`` (1-based positions, ties share the best one)."""
    if scores is not None:
        goodness = scores.detach().to(device=device, dtype=dtype)
    elif ranks is not None:
        goodness = -ranks.detach().to(device=device, dtype=dtype)
    else:
        goodness = -torch.arange(k, device=device, dtype=dtype).expand(batch, k)
    tau = 1 + (goodness[:, None, :] > goodness[:, :, None]).sum(-1)  # 1 + #images strictly better
    if scores is None:
        return (k - tau).to(dtype) / (k - 1), tau
    if not minmax:
        if not bool(((goodness >= 0) & (goodness <= 1)).all()):
            raise ValueError("rank_dpo: with minmax_scores=False the scores must lie in [0, 1]")
        return goodness, tau
    low, high = goodness.amin(1, keepdim=True), goodness.amax(1, keepdim=True)
    span = high - low
    phi = torch.where(span > 0, (goodness - low) / torch.where(span > 0, span, 1.0), 0.0)
    return phi, tau


def pair_weights(phi: Tensor, tau: Tensor) -> Tensor:
    """Un-normalised ``Δ [B, K, K]`` (dtype of φ): ``Δ[b, a, c] > 0`` only where a is ranked above c."""
    gain = torch.exp2(phi) - 1
    inv_discount = 1 / torch.log1p(tau.to(phi.dtype))
    above = tau[:, :, None] < tau[:, None, :]
    delta = (gain[:, :, None] - gain[:, None, :]).abs() * (inv_discount[:, :, None] - inv_discount[:, None, :]).abs()
    return torch.where(above, delta, 0.0)


class RankDPO(Objective):
    """RankDPO over groups of ``K ≥ 3`` ranked images (the maths also accepts ``K = 2``)."""

    name = "rank_dpo"
    Config = RankDPOConfig
    needs_reference = True
    min_group_size = 3
    max_group_size = None
    needs_ranks = True

    def loss(self, terms: PreferenceTerms) -> ObjectiveOutput:
        """``policy_err``, ``ref_err``: ``[B, K]``; ``ranks`` or ``scores`` ``[B, K]`` (or columns best first)."""
        require_reference(self.name, terms)
        terms = prepare_terms(self.name, terms, min_k=2)
        err, ref = terms.policy_err, terms.ref_err
        batch, k = err.shape
        phi, tau = gains_and_positions(terms.ranks, terms.scores, batch, k, device=err.device, dtype=err.dtype,
                                       minmax=self.config.minmax_scores)
        delta = pair_weights(phi, tau)
        total = delta.sum((1, 2))
        used = total > 0  # groups with at least one weighted pair
        weights = delta / torch.where(used, total, 1.0)[:, None, None]
        s = err - ref
        margin = -0.5 * self.config.beta * (s[:, :, None] - s[:, None, :])  # [B, a, b]: s_a − s_b
        per_group = (weights * F.softplus(-margin)).sum((1, 2))
        loss = (per_group * used).sum() / used.sum().clamp_min(1)  # 0 (graph kept) if all groups tie
        weighted = delta > 0
        n_pairs = weighted.sum().clamp_min(1)
        margin = margin.detach()
        best, worst = tau.argmin(1, keepdim=True), tau.argmax(1, keepdim=True)
        metrics = {
            "loss": loss.detach(),
            "implicit_acc": ((margin > 0) & weighted).sum().to(err.dtype) / n_pairs,
            "margin": torch.where(weighted, margin, 0.0).sum() / n_pairs,
            "err_w": err.gather(1, best).mean().detach(),
            "err_l": err.gather(1, worst).mean().detach(),
            "ref_gap": (ref.gather(1, best) - ref.gather(1, worst)).mean().detach(),
        }
        return ObjectiveOutput(loss, metrics)


__all__ = ["RankDPO", "RankDPOConfig", "gains_and_positions", "pair_weights"]
