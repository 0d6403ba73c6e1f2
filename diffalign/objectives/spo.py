"""SPO: "Aesthetic Post-Training Diffusion Models from Generic Preferences with Step-by-step
Preference Optimization" (v1: "Step-aware Preference Optimization").

Liang et al., CVPR 2025, https://arxiv.org/abs/2406.04314 (official code: RockeyCoss/SPO,
``train_scripts/train_spo.py``, ``spo/custom_diffusers/ddim_with_logprob.py``).

The pairs are made while training (:class:`~diffalign.steps.spo.SPOStep`): from one shared
``x_t`` of the policy's own sampling chain, ``k`` candidates ``x_{t'}`` are drawn, scored by the
step-aware preference model, and the best and worst become ``(x^w, x^l)`` when their score gap
passes the threshold. The loss is DPO on the log-probability ratio of that one step::

    r = log p_θ(x' | x_t) − log p_ref(x' | x_t),   r̄ = clamp(r, log(1 − ε), log(1 + ε))
    loss = mean_pairs −log σ(β·(r̄_w − r̄_l))

with ``p`` the sampler's Gaussian step (:mod:`diffalign.solver`), both models guided as the
sampler is. β = 10, ε = 0.1 (both official launchers).

**Terms.** The step gives each candidate's log-probability ``−mean_d (x' − μ)²/(2σ²)``, less the
``log σ + ½ log 2π`` that policy and reference share at the same step, so
``r = policy_logp − ref_logp`` exactly: ``policy_logp``/``ref_logp`` ``[B, 2]``, column 0 the
winner. The logged ``err_w``/``err_l`` are their negatives.

**The clip and the reduction (SPO issue #19).** The official code averages the log-density over
latent elements, so ``r`` is ``D`` times smaller than the whole latent's log-ratio (D = 16,384 at
SD1.5's 64²·4) and the ratio clip ``[0.9, 1.1]`` almost never acts. Here too the default is the
mean (``rollout.log_prob_reduction: mean``): β = 10 was tuned on that scale, and with a sum the same β
would give margins thousands of times larger and a clip that always acts. The clip is kept as the
official code writes it, a hard clamp (no gradient outside the band); ``clip: 0`` switches it off.

Audit against the official code (RockeyCoss/SPO@27a8642, under ``spo_training_and_inference/``:
``train_scripts/train_spo[_sdxl].py``, ``configs/``, ``spo/custom_diffusers/``,
``spo/preference_models/compare_funcs.py``, ``accelerate_cfg/1m4g_fp16.yaml``). Sampler first:

- Scheduler and steps: DDIM from the pipeline's scheduler config (train_spo.py L143), 20 steps
  (basic_config.py L65); diffalign DDIM times from the same config (SD1.5: 951, 901, …, 1). Matched.
- η = 1 (basic_config.py L68), guidance 5 against the empty prompt (L70; train_spo.py L271–279).
  Matched (``rollout.eta``, ``rollout.guidance``).
- Branching: from step 4 (``divert_start_step``, basic_config.py L99), k = 4 on SD1.5 (its config
  L10), 2 on SDXL (basic_config.py L73); k candidates share one mean (ddim_seperate.py L114–122).
  Matched (``branch_from``, ``candidates``).
- Scoring: each candidate's x̂0, decoded, scored by the step-aware model at the candidates' own
  timestep; the last step's samples at t = 0 (multi_sample_pipeline.py L142–182, L238–254). Matched.
- Threshold: softmax of best and worst scores differs by more than 0.3 / 0.4 (compare_funcs.py
  L5–14; SDXL config L18). Matched (``score_gap`` = 2·artanh(threshold)).
- Continuation: a uniformly drawn candidate, its prediction reused (multi_sample_pipeline.py
  L200–223). Matched.
- Last step: lands on ᾱ_0, not 1 (``prev_timestep`` clamped to 0, ddim_with_logprob.py L53–61).
  Matched (``final_scales`` from ``set_alpha_to_one``, false in SD's configs).
- SDXL "MSPO": ``num_inner_step = 3`` (SDXL config L22; multi_sample_pipeline_sdxl.py L249–350):
  each branch runs 3 more steps before it is scored and all 4 transitions of the win and the lose
  branch become pairs; diffalign scores one step later and trains the branching step only. Stated:
  not implemented; SDXL pairs, and results, can differ from the official SDXL run.
- Rollout precision: the chain runs in fp16 and stores fp16 candidates (ddim_seperate.py L129);
  diffalign keeps the chain in fp32. Stated: rounding only.
- Prompt dropout and perturbed timesteps: none. Matched (``prompt_dropout`` default 0).

Training:

- Log-probability: Gaussian step density, mean over latent elements (ddim_with_logprob.py
  L121–127), of guided predictions of policy and reference (``train.cfg``, basic_config.py L97;
  train_spo.py L474–526). Matched (``log_prob_reduction: mean``).
- Loss: ratios ``exp(lp − lp_ref)`` clamped to [1 − ε, 1 + ε], ``−log σ(β·log r_w − β·log r_l)``,
  mean over the minibatch (train_spo.py L584–586), β = 10, ε = 0.1 (basic_config.py L101–103).
  Matched (a clamp in log space is the same function).
- Reference: ``deepcopy`` of the fp16 base UNet before the adapters go on (train_spo.py L152–160);
  diffalign the policy with its adapters off. Matched (the same weights).
- LoRA: rank 4 (SDXL 64), α = rank, gaussian init, to_q/k/v/out.0 (train_spo.py L162–169). Matched
  (the shipped configs; diffalign's LoRA init is gaussian too).
- Optimiser: AdamW lr 6e-5 (SDXL 1e-5), (0.9, 0.999), weight decay 1e-4, eps 1e-8, no lr scheduler
  (basic_config.py L79–92; train_spo.py L245–252). Matched (``lr_scheduler: constant``).
- Gradient clipping: ``clip_grad_norm_(trainable_para, 1.0)`` (train_spo.py L604; SDXL L689) gets the
  ``filter`` iterator the optimiser already consumed (L245–247; SDXL L262), so nothing is clipped;
  diffalign clips at ``optim.max_grad_norm`` (1.0 in the shipped configs). Stated:
  ``optim.max_grad_norm: 0`` reproduces the official (unclipped) updates.
- Pairs per update: the official run samples 10 prompts per GPU, gathers every kept pair of all GPUs,
  shuffles them, drops the remainder and trains all of them in minibatches of 10, one optimiser step
  each (train_spo.py L388–460, L465–606); diffalign makes one update per sampled batch from at most
  ``max_pairs_per_prompt`` pairs per prompt, drawn at random, and drops the rest. Stated: fewer pairs
  trained per rollout and no several-updates-per-rollout; no key reproduces it exactly.
- Too few pairs: a round with fewer kept pairs than GPUs is skipped (train_spo.py L410–411);
  diffalign runs a zero-weight backward. Matched in effect (no update from it).
- Mixed precision: fp16 (1m4g_fp16.yaml L8) with fp16 base weights and fp32 LoRA, and no autocast
  under LoRA (train_spo.py L153, L170–172, L282); diffalign ``mixed_precision: fp16`` autocasts and
  computes log-probabilities in fp32. Stated: rounding only.
- EMA: none. Matched.
- Preference model: the authors' SD1.5/SDXL checkpoints (basic_config.py L30–35); diffalign loads
  them with ``rollout.preference_checkpoint`` or uses one it trained. Stated: a retrained model scores
  differently.
- Length: 10 epochs over the 4,000 prompts (basic_config.py L57); diffalign ``max_steps``. Stated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F

from .base import (Objective, ObjectiveOutput, PreferenceTerms, pair_metrics, prepare_terms, require_reference,
                   weighted_mean)

@dataclass
class SPOConfig:
    """Defaults: the official SD1.5 launcher (``spo_sd-v1-5_4k-prompts_num-sam-4_10ep_bs10.py``).
    How the pairs are sampled (steps, η, guidance, candidates, threshold, the step-aware model) is
    the step's: the config's ``rollout:`` block (:class:`~diffalign.step_settings.SPORollout`).

    Attributes:
        beta: DPO strength on the (mean-reduced) step log-ratio.
        clip: ε of the ratio clamp ``[1 − ε, 1 + ε]`` (0: none).
    """

    beta: float = 10.0
    clip: float = 0.1

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        if not 0 <= self.clip < 1:
            raise ValueError(f"clip must be in [0, 1), got {self.clip}")


class SPO(Objective):
    """SPO on pairs made from the policy's own steps; the dataset gives prompts only (any K)."""

    name = "spo"
    Config = SPOConfig
    needs_reference = True
    min_group_size = 1
    max_group_size = None
    per_image = "logp"
    step = "spo"

    def loss(self, terms: PreferenceTerms) -> ObjectiveOutput:
        """``terms.policy_logp``, ``terms.ref_logp``: ``[N, 2]`` step log-probabilities of the kept
        pairs (winner first). Returns the mean over the N pairs."""
        require_reference(self.name, terms, per_image="logp")
        terms = prepare_terms(self.name, terms, min_k=2, max_k=2, per_image="logp")
        ratio = terms.policy_logp - terms.ref_logp  # log p_θ − log p_ref, [N, 2]
        if self.config.clip > 0:
            ratio = ratio.clamp(math.log(1 - self.config.clip), math.log(1 + self.config.clip))
        margin = self.config.beta * (ratio[:, 0] - ratio[:, 1])
        loss = weighted_mean(F.softplus(-margin), terms.weights)
        metrics = pair_metrics(-terms.policy_logp, -terms.ref_logp, margin, loss)
        return ObjectiveOutput(loss, metrics)


__all__ = ["SPO", "SPOConfig"]
