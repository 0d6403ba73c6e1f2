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

Audit against the official code (basiclab/DiffusionDRO@b0693ec: ``train.py``, ``misc/buffer.py``,
``misc/dataset.py``, ``tools/pickapic.py``). Rollouts first:

- Sampler: DPM-Solver++ (diffusers' multistep defaults, patched for per-sample times; train.py
  L190–194, L315–316); diffalign deterministic DDIM (flow: Euler), η = 0. Stated: both follow the
  probability-flow ODE in 20 steps, but DPM-Solver++ is second order, so the states ``x_t`` and the
  snapshot's targets differ slightly; diffalign has no DPM-Solver++ rule.
- Steps and guidance: 20 steps, guidance 1 (L203–213). Matched (``rollout.steps``, ``rollout.guidance``).
- Perturbed timesteps: 950, 900, …, 0 plus one ``randint(0, 50)`` per trajectory (L687–692);
  diffalign the checkpoint's DDIM times (SD1.5: 951, …, 1) each moved up by one U[0, 1) fraction of
  its gap per group, the first capped at 999. Matched up to one timestep index.
- Training state: each micro-step rolls out 4 fresh trajectories into a buffer of 4 and trains each at
  one uniformly drawn step with the snapshot's prediction there (L183–189, L655–711, L731; buffer.py
  L88–90, L106–116, L136–146); diffalign one rollout per group to a drawn ``j``. Matched.
- Snapshot: a third UNet, copied from the policy at the start and every 16 micro-steps, i.e. after
  each update (L371–377, L617, L805–807); diffalign ``refresh_every: 1``. Matched.
- SDXL rollouts (not in the paper): the buffer pipeline gets the default time ids ``(H, W, 0, 0, H,
  W)`` (L698–707) while training uses the expert's original size and crop for both terms (L737–740,
  misc/dataset.py L132); diffalign rolls out with the expert's time ids too. Stated: SDXL only.
- Rollout precision: a bf16 snapshot under autocast (L371–377, L697); diffalign's snapshot under full
  fine-tuning copies the fp32 master weights. Stated: rounding only.

Training:

- Expert term: fresh ε̄, ``add_noise`` at the rollout state's t (L745–746). Matched.
- Loss: errors mean over C·H·W (L758, L762), ``max(diff + margin, 0)`` averaged (L767–768),
  margin 0.001 (L230–233). Matched.
- Reference: a separate UNet in the mixed-precision dtype (L363–369). Matched (frozen copy, same dtype).
- Prompt dropout: 20 % of prompts become "" (``--random_drop_prompt_probability`` 0.2, L90–96,
  L514–522); the same embedding conditions the rollout and both terms (L666–707); diffalign default 0
  and its step rolls out with the conditioning it trains with. Stated: ``prompt_dropout: 0.2`` matches.
- Flips: ``--random_flip`` on by default (L86–89; misc/dataset.py L107); diffalign ``data.random_flip``
  off by default. Stated: ``data.random_flip: true`` (uncached) matches.
- Resize and crop: shorter side to 512, centre crop (misc/dataset.py L102–128). Matched.
- Experts: top 500 unique (image, caption) of Pick-a-Pic v2 train by HPSv2 or PickScore
  (tools/pickapic.py L104–111, L284–288); ``diffalign build experts --top 500 --by scores`` ranks the
  images of a scored pair dataset, whose builder drops ties and unlabelled rows first. Stated: a
  slightly smaller candidate pool unless the pairs are built with ``--keep-ties``.
- Optimiser: AdamW, lr 1e-4, torch defaults (weight decay 1e-2), constant, no warm-up (L156–178,
  L460–468). Matched (the shipped configs).
- Batch: 4 per GPU × 16 accumulation × 4 GPUs, 25,600 micro-steps = 1,600 updates (L137–148).
  Matched on 4 processes.
- Gradient clipping: ``clip_grad_norm_(parameters, 1.0)`` (L780–781) gets the ``filter`` iterator the
  optimiser already consumed (L460–461), so nothing is clipped; diffalign clips at
  ``optim.max_grad_norm`` (1.0 in the shipped configs). Stated: ``optim.max_grad_norm: 0`` reproduces
  the official (unclipped) updates.
- Master weights: the trained UNet is loaded in bf16 and only fp16 is up-cast (L379–389), so AdamW
  and the EMA update bf16 weights; diffalign keeps fp32 masters under bf16 autocast. Stated: small
  updates that bf16 rounds away in the official run are kept here.
- EMA: diffusers' ``EMAModel`` (decay cap 0.9999, ramp (1 + s)/(10 + s), so about 0.994 at update
  1,600), stepped after every update, and the checkpoints saved are the EMA weights (L253–260,
  L391–399, L797–803, L827–832); diffalign has no EMA and saves the policy. Stated: the official
  weights are a tail average of training; this can change results.
- Mixed precision: bf16 (L248–252). Matched (``mixed_precision: bf16``).
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
