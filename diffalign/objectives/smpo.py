"""SmPO: "Smoothed Preference Optimization via ReNoise Inversion for Aligning Diffusion Models with
Varied Human Preferences".

Lu et al., ICML 2025, https://arxiv.org/abs/2506.02698 (official code: JaydenLyh/SmPO ``train.py``
and `` preprocessing.py``, a Salesforce DiffusionDPO ``train.py`` fork).

A reward model's scores replace the binary label by a smoothed one, and the winner's and loser's
likelihoods are replaced by geometric mixtures weighted by it ("preference likelihood averaging"),
which multiplies the DPO margin by ``γ(2p − 1)``. Per pair (column 0 = the dataset's preferred w)::

    p = σ((score_w − score_l)/score_scale),   loss = mean_B −log σ(γ·(2p − 1)·margin_dpo)

with ``margin_dpo = −(β/2)·[(err_θ(w) − err_θ(l)) − (err_ref(w) − err_ref(l))]``, InPO's and
Diffusion-DPO's margin (:func:`~diffalign.objectives.diffusion_dpo.dpo_margin`), on latents
found by ReNoise inversion; the errors come from the ``"inversion"`` trainer step
(``step = "inversion"``), the scores from ``terms.scores``. Equal scores give p = ½: the loss is
ln 2 whatever the errors and its gradient is exactly zero. The loss equals Diffusion-DPO's only
when ``γ(2p − 1) = 1``; a "hard" label does not give it (see ``score_scale``).

Defaults, from the official launchers (``examples/sd15.sh``, ``examples/sdxl.sh``) and code:
- β = 2000 for SD1.5 (``--beta_dpo 2000``); **SDXL uses β = 5000**. Same ½β convention and
  mean-over-elements errors as diffalign's Diffusion-DPO.
- γ = 10, hard-coded in ``train.py``.
- ``score_scale`` = 16.6581. The official code min–max normalises raw PickScore cosines with the
  dataset constants r_min = 0.115435, r_max = 0.282016 and takes ``p = σ(r'_w − r'_l)``. Only the
  gap enters, so r_min cancels: ``p = σ((r_w − r_l)/(r_max − r_min))``. diffalign's PickScore is
  ``100 · cosine`` (≈ 20–23), so ``score_scale = 100·(0.282016 − 0.115435) = 16.6581``. For
  another reward, set it to that reward's spread (max − min over the dataset) in its own units:
  a full-spread gap then gives p = σ(1) ≈ 0.731, as officially. With these constants p stays in
  [0.5, 0.731], so ``γ(2p − 1) ≤ 10·tanh(½) ≈ 4.62``.
- Rest of the recipe, for reference: 1,024 pairs per step (8 GPUs × 1 × accumulation 128),
  200 steps with 100 warm-up steps, lr 1.024e-5; SD1.5 from an undistributed SFT UNet.

Inversion, as officially run and as diffalign runs it by default (the config's ``inversion:``
block beside ``objective:``, the step's ``InversionConfig``; :mod:`diffalign.inversion`): DDIM
inversion with the current **policy** (no gradient), conditional only, on the fixed
``DDIMInverseScheduler`` grid of S = 5 steps (SD1.5; SDXL 10) over the whole schedule, with one
ReNoise iteration per step: the step is redone with the mean of the first prediction and one
made at the tentative latent **at the same (start) timestep**.

Audit against the official code (JaydenLyh/SmPO@8922d54 ``train.py``), each difference matched or stated:

- **Landing (matched, ``landing: official``).** ``set_timesteps(5)`` (L881; SDXL 10, L872) and the
  loop over ``timesteps < t`` (L1002–1024): under the pinned diffusers (0.20) the latent ends at the
  first grid level at or above t (1, 201, …, 801; up to 199 timesteps noisier) while the model is
  told t and τ uses ᾱ_t (L1025–1027). ``landing: exact`` inverts onto t (``steps: 4`` costs the
  grid's average 3.79 steps); on the toy it gains less (``benchmarks/results/toy.md``).
- **ReNoise timing (matched, ``renoise_at: start``).** ``noise_pred_1`` is predicted at the step's
  start timestep on the tentative latent and averaged with the first prediction (L1017–1022);
  ``renoise_at: end`` is the fixed-point form (re-estimates at the point's own time, averaged alone).
- **Empty prompts (matched, ``prompt_dropout`` 0.2).** ``--proportion_empty_prompts`` 0.2 (L354,
  used L681 and in ``encode_prompt_sdxl`` L395) for the inversion and the loss alike; drawn here
  per group from its own seed. A cached run embeds "" once at start.
- **Pair order (stated; the same loss).** The official preprocessing reorders each pair so that w
  is the higher-PickScore image (human ties dropped). Here the dataset's order stays and a negative
  ``2p − 1`` flips the pair: swapping w ↔ l flips the sign of ``margin_dpo`` and turns p into
  1 − p, so the product is unchanged.
- **One label and t per batch (stated).** The official code uses the label, pair order and
  timestep of the first item of a batch for the whole batch (L739–747, L1002, L1061), right only
  at per-device batch 1; here each pair has its own.
- **Precision and recipe (stated).** fp16 mixed precision; 1,024 pairs per step (8 GPUs × 1 ×
  accumulation 128), 200 steps with 100 warm-up steps, lr 1.024e-5; SD1.5 from an undistributed
  SFT UNet.

ε-prediction only (the official code asserts ``prediction_type == "epsilon"``). diffalign keeps
each family's own parameterisation (as its Diffusion-DPO does); since w and l share t this
rescales ``margin_dpo``, i.e. β, per group: v-prediction errors are ε errors / ᾱ_t, rectified-flow
velocity errors are ε errors / (1 − σ)². Derivation in :mod:`diffalign.objectives.inpo`.

Metrics: the fixed names only; ``margin`` and ``implicit_acc`` use the full log-sigmoid argument
``γ(2p − 1)·margin_dpo`` (so a pair counts as ranked right when the model prefers the
higher-scored image, and tied-score pairs never do).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import (Objective, ObjectiveDataError, ObjectiveOutput, PreferenceTerms, pair_metrics, prepare_terms,
                   require_reference)
from .diffusion_dpo import dpo_margin, dpo_pair_loss

PICKSCORE_SCALE = 100.0 * (0.282016 - 0.115435)
"""16.6581: the official min–max range of raw PickScore cosines, in diffalign's PickScore units (× 100)."""


@dataclass
class SmPOConfig:
    """``beta``: KL strength (mean-over-elements errors; official 2000 SD1.5, 5000 SDXL);
    ``gamma``: likelihood-averaging sensitivity γ; ``score_scale``: score gap that gives p = σ(1).
    How the step inverts each image is the config's ``inversion:`` block (defaults:
    :attr:`SmPO.step_defaults`)."""

    beta: float = 2000.0
    gamma: float = 10.0
    score_scale: float = 16.6581

    def __post_init__(self):
        for key in ("beta", "gamma", "score_scale"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)}")


class SmPO(Objective):
    """SmPO on scored pairs (``K = 2``) of inverted latents; needs the reference model's errors."""

    name = "smpo"
    Config = SmPOConfig
    needs_reference = True
    needs_scores = True
    min_group_size = 2
    max_group_size = 2
    step = "inversion"
    step_defaults = {"steps": 5, "renoise_iters": 1}
    prompt_dropout = 0.2

    def label(self, scores: torch.Tensor) -> torch.Tensor:
        """Smoothed label ``p [B] = σ((score_w − score_l)/score_scale)`` of scores ``[B, 2]``."""
        return torch.sigmoid((scores[:, 0] - scores[:, 1]) / self.config.score_scale)

    def loss(self, terms: PreferenceTerms) -> ObjectiveOutput:
        """``policy_err``, ``ref_err``, ``scores``: ``[B, 2]``. Mean over the B pairs."""
        require_reference(self.name, terms)
        terms = prepare_terms(self.name, terms, min_k=2, max_k=2)
        if terms.scores is None:
            raise ObjectiveDataError(
                f"{self.name} needs a reward score per image (terms.scores is None): train on a dataset with a "
                "'scores' column, e.g. made by `diffalign score --images DATASET --reward pickscore --into OUT`")
        cfg = self.config
        err, ref = terms.policy_err, terms.ref_err
        p = self.label(terms.scores.detach().to(device=err.device, dtype=err.dtype))
        margin = cfg.gamma * (2 * p - 1) * dpo_margin(err, ref, cfg.beta)
        loss = dpo_pair_loss(margin, "sigmoid").mean()
        return ObjectiveOutput(loss, pair_metrics(err, ref, margin, loss))


__all__ = ["PICKSCORE_SCALE", "SmPO", "SmPOConfig"]
