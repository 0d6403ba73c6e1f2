"""SPO's step (:mod:`diffalign.objectives.spo`): the step-wise resampler, then the pairs' step
log-probabilities under the policy (with gradient) and the reference.

Per batch of ``B`` prompts (the dataset's images are not used), as the official
``multi_sample_pipeline.py`` does:

1. one chain per prompt from N(0, I), with the policy, guided, η-DDIM (flow: the SDE form), for
   the first ``branch_from`` steps;
2. at every later step from the shared ``x_t``: ``k`` candidates ``x_{t'} = μ + σ·z_j``; each
   candidate's prediction at ``t'`` gives its ``x̂0``, decoded and scored by the step-aware
   preference model at ``t'`` (the last step's candidates are clean and scored at t = 0);
3. best and worst become a pair ``(x_t, x^w, x^l)`` when ``S_b − S_w > 2·artanh(threshold)``;
   the chain continues from a uniformly drawn candidate (its prediction is reused).

Then, for the kept pairs (at most ``max_pairs_per_prompt`` per prompt, drawn at random), one
guided policy forward at each ``x_t`` (with gradient) and one reference forward give the step
means, and the terms are the step log-probabilities ``−mean_d (x' − μ)²/(2σ²)`` under both
(:func:`diffalign.solver.step_log_prob`, less the constants they share).

Cost per prompt, in guided denoiser calls without gradient: ``branch_from + k·(S − branch_from)``
(SD1.5 defaults: 4 + 4·16 = 68), plus as many VAE decodes and preference-model passes as
candidates; then one guided forward with gradient and one without per kept pair.

When no pair of the batch passes the threshold, the loss is that of the first prompt's last
candidates with weight 0: every process still runs a backward (the others may have pairs).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffalign.objectives.base import PreferenceTerms
from diffalign.rollout_settings import SPORollout
from diffalign.solver import (
    DDIM,
    guided,
    sampling_grid,
    solve,
    step_log_prob,
    take_step,
)
from diffalign.steps.rollout import RolloutStep


def load_preference_model(config, device):
    """The step-aware preference model an SPO config names, frozen, on ``device``."""
    from diffalign.errors import DiffalignError

    if config.preference_model is None:
        raise DiffalignError(
            "spo needs a step-aware preference model: set rollout.preference_model to a folder written by "
            "`python reward_models/train_step_aware.py` (or rollout.preference_checkpoint to the authors' "
            "released .bin, with rollout.preference_model the CLIP folder it was fine-tuned from)"
        )
    from diffalign.rewards.step_aware import StepAwarePreferenceModel

    if config.preference_checkpoint is not None:
        model = StepAwarePreferenceModel.from_authors_checkpoint(config.preference_checkpoint, config.preference_model)
    else:
        model = StepAwarePreferenceModel.from_pretrained(config.preference_model)
    return model.to(device).eval().requires_grad_(False)


class SPOStep(RolloutStep):
    """Settings: the config's ``rollout:`` block (:class:`~diffalign.step_settings.SPORollout`)."""

    name = "spo"

    @classmethod
    def family_problem(cls, objective, family) -> str | None:
        if family.media != "image":
            return "its step-aware preference model scores images, not clips"
        return None

    def __init__(self, family, objective, reference, group_size: int, settings=None, **options):
        super().__init__(family, objective, reference, group_size, settings or SPORollout(), **options)
        self.scorer = load_preference_model(self.config, family.device)

    def __call__(self, model, batch: dict, generator) -> PreferenceTerms:
        with self.timed("rollout"):
            found = self.rollout(model, batch, generator)
        with self.timed("train"):
            return self.terms(model, *found)

    # ----------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def rollout(self, model, batch: dict, generator):
        """The resampler; returns ``(pairs, cond, uncond)`` with ``pairs`` a list of
        ``(group [N], u [N], v [N], x_t [N, 1, ...], x_w, x_l)`` per branching step."""
        config, family = self.config, self.family
        cond, uncond = self.conditioning(batch)
        b, k = len(batch["prompts"]), config.candidates
        noise = self.start_noise(batch, generator)
        grid = sampling_grid(family, config.steps, b, noise.shape[-2:]).to(family.device)
        rule = DDIM(config.eta)
        chain = solve(family, model, noise, cond, grid, rule, guidance=config.guidance,
                      uncond=uncond, generator=generator, stop_after=config.branch_from)
        x, pred = chain.final, None
        cond_k = cond.repeat_images(k)
        uncond_k = None if uncond is None else uncond.repeat_images(k)
        pairs, gaps, scores_seen = [], [], []
        for i in range(config.branch_from, config.steps):
            u, v = grid[:, i], grid[:, i + 1]
            known = pred  # the chosen candidate's prediction, made when it was scored
            pred, mean, std = rule.transition(family, lambda x_, t_: known if known is not None else guided(
                family, model, x_, t_, cond, uncond, config.guidance), x, u, v)
            candidates = take_step(rule, mean.expand(-1, k, *mean.shape[2:]), std, generator)
            last = i + 1 == config.steps
            if last:
                x0, pred_k = candidates, None
            else:
                pred_k = guided(family, model, candidates, v, cond_k, uncond_k, config.guidance)
                x0 = family.split_prediction(pred_k, candidates, v)[1]
            scores = self.score(x0, batch["prompts"], torch.zeros_like(v) if last else v)  # [B, k]
            best, worst = scores.argmax(1), scores.argmin(1)
            gap = scores.max(1).values - scores.min(1).values
            keep = (gap > config.score_gap) & (std.flatten() > 0)
            rows = torch.arange(b, device=x.device)
            pairs.append((keep, u, v, x, candidates[rows, best][:, None], candidates[rows, worst][:, None]))
            gaps.append(gap)
            scores_seen.append(scores.mean())
            if last:
                self.keep_images(candidates[:, 0])
                break
            pick = self._draw_index(generator, b, k, x.device)
            x, pred = candidates[rows, pick][:, None], pred_k[rows, pick][:, None]
        kept = torch.stack([p[0] for p in pairs]).float()  # [steps, B]
        self._metrics = {"spo/kept_pairs": kept.mean(), "spo/score_gap": torch.stack(gaps).mean(),
                         "spo/preference_score": torch.stack(scores_seen).mean()}
        return pairs, cond, uncond, generator

    def score(self, x0: Tensor, prompts: list[str], t: Tensor) -> Tensor:
        """``[B, k]`` step-aware scores of the decoded ``x̂0`` ``[B, k, *latent]`` at times ``t [B]``."""
        b, k = x0.shape[:2]
        pixels = (self.family.decode(x0.flatten(0, 1)).float() / 2 + 0.5).clamp(0, 1)
        texts = [p for p in prompts for _ in range(k)]
        scorer_device = next(self.scorer.parameters()).device
        out = self.scorer.score_noisy(pixels.to(scorer_device), texts, t.repeat_interleave(k).to(scorer_device))
        return out.float().to(x0.device).reshape(b, k)

    @staticmethod
    def _draw_index(generator, b: int, k: int, device) -> Tensor:
        gens = generator if isinstance(generator, (list, tuple)) else [generator] * b
        return torch.cat([torch.randint(k, (1,), generator=g) for g in gens]).to(device)

    # ----------------------------------------------------------------------------- training
    def terms(self, model, pairs, cond, uncond, generator) -> PreferenceTerms:
        """Step log-probabilities ``[N, 2]`` of the kept pairs under the policy and the reference."""
        keep = torch.stack([p[0] for p in pairs])  # [steps, B]
        keep = self._cap(keep, generator)
        weights = None
        if not keep.any():  # nothing passed: a zero-weight pair so every process runs backward
            keep = torch.zeros_like(keep)
            keep[-1, 0] = True
            weights = torch.zeros(1, device=keep.device)
        step_index, group = keep.nonzero(as_tuple=True)

        def gather(j):
            return torch.cat([pairs[s][j][g][None] for s, g in zip(step_index.tolist(), group.tolist())])

        u, v, x_t, x_w, x_l = (gather(j) for j in range(1, 6))
        cond_n = cond.groups(group)
        uncond_n = None if uncond is None else uncond.groups(group)
        winners_losers = torch.cat([x_w, x_l], dim=1)  # [N, 2, ...]
        with self.reference.paired():  # the same inputs: the policy reuses the reference's shared calls
            with self.reference.active() as reference:
                ref_logp = self._step_log_prob(reference, x_t, winners_losers, u, v, cond_n, uncond_n)
            policy_logp = self._step_log_prob(model, x_t, winners_losers, u, v, cond_n, uncond_n)
        return PreferenceTerms(policy_logp=policy_logp, ref_logp=ref_logp, t=u, weights=weights)

    def _step_log_prob(self, model, x_t, x_next, u, v, cond, uncond) -> Tensor:
        """``[N, 2]`` log-probabilities of both candidates, from one guided forward at ``x_t``."""
        config = self.config
        return step_log_prob(self.family, model, x_t, x_next, u, v, cond, rule=DDIM(config.eta), uncond=uncond,
                             guidance=config.guidance, reduction=config.log_prob_reduction, constants=False)

    def _cap(self, keep: Tensor, generator) -> Tensor:
        """At most ``max_pairs_per_prompt`` kept pairs per prompt, drawn with the group's generator."""
        cap = self.config.max_pairs_per_prompt
        if cap is None:
            return keep
        keep = keep.clone()
        gens = generator if isinstance(generator, (list, tuple)) else [generator] * keep.shape[1]
        for g in range(keep.shape[1]):
            rows = keep[:, g].nonzero().flatten()
            if len(rows) > cap:
                order = torch.randperm(len(rows), generator=gens[g])[:cap]
                keep[:, g] = False
                keep[rows[order.to(rows.device)], g] = True
        return keep


__all__ = ["SPOStep", "load_preference_model"]
