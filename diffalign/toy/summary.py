"""What a toy benchmark run's numbers say: each model's held-out summary, an objective's runs
over seeds and its sweep, step costs against Diffusion-DPO's, and the reward-hacking watch on a
run's curve (:mod:`diffalign.toy.benchmark` runs, :mod:`diffalign.toy.report` writes)."""

from __future__ import annotations

import time

import torch

from diffalign.evaluation.stats import paired_gain, win_rate


SECONDS_PARTS = ("rollout_seconds_per_step", "scoring_seconds_per_step", "train_seconds_per_step")
"""A sampling step's seconds per update by part (:data:`diffalign.steps.rollout.PARTS`), as a run records them."""


def sample_summary(rewards: torch.Tensor, base_rewards: torch.Tensor, follows: torch.Tensor) -> dict:
    """One model's held-out samples against the base's: mean reward, paired gain and win-rate with
    their intervals, prompt following (``rewards``, ``base_rewards``, ``follows``: ``[N]``)."""
    gain = paired_gain(rewards, base_rewards)
    wins = win_rate(rewards, base_rewards)
    return {"reward": float(rewards.mean()), "gain": gain.as_dict(), "gain_excludes_zero": gain.excludes_zero(),
            "win_rate": wins.as_dict(), "prompt_following": float(follows.float().mean())}


def watch(run: dict) -> dict:
    """The reward-hacking watch on a run's curve (:class:`~diffalign.evaluation.reward_hacking.RewardHackingWatch`):
    the step's own score (SPO's step-aware score) against the true reward of the curve seeds,
    firing when the true reward has fallen 0.01 below its best while the score kept rising."""
    if not run["proxy"]:
        return {}
    import warnings

    from diffalign.evaluation.reward_hacking import RewardHackingWatch

    watch = RewardHackingWatch(tolerance=0.01, proxy_name="step-aware score", true_name="toy reward of the curve seeds")
    truth = {step: reward for step, reward, _ in run["curve"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the message goes into the report instead
        events = [e for step, score in run["proxy"] if (e := watch.update(step, score, truth[step])) is not None]
    return {"divergence": events[0].message if events else None}


def runs_summary(runs: list[dict]) -> dict:
    """Several seeds' held-out results together: the runs, their mean gain, whether every seed's
    interval is above 0, the mean win-rate and the lowest prompt following."""
    return {"runs": runs, "mean_gain": sum(r["gain"]["value"] for r in runs) / len(runs),
            "every_seed_gains": all(r["gain"]["low"] > 0 for r in runs),
            "mean_win_rate": sum(r["win_rate"]["value"] for r in runs) / len(runs),
            "min_prompt_following": min(r["prompt_following"] for r in runs)}


def objective_summary(runs: list[dict], sweep: dict, reward_before: float, began: float) -> dict:
    """The chosen rate's runs (the first is the sweep's), their mean gain, and the first seed's
    fields at the top level (``gain``, ``curve``, …) as a one-seed run reports them."""
    first = runs[0]
    return {**{k: v for k, v in first.items() if k not in ("lr", "seed")}, "reward_before": reward_before,
            "lr": first["lr"], **runs_summary(runs),
            "sweep": {f"{lr:g}": {"curve": s["curve"], "seconds_per_step": s["seconds_per_step"]} for lr, s in sweep.items()},
            "seconds_per_step": sum(r["seconds_per_step"] for r in runs) / len(runs),
            **{part: sum(r[part] for r in runs) / len(runs) for part in SECONDS_PARTS if part in first},
            "wall_seconds": round(time.time() - began, 1)}


def step_costs(objectives: dict) -> None:
    """Each objective's training-step time as a multiple of Diffusion-DPO's in the same run."""
    dpo = objectives.get("diffusion_dpo")
    for summary in objectives.values():
        summary["step_cost_vs_dpo"] = round(summary["seconds_per_step"] / dpo["seconds_per_step"], 2) if dpo else None


def equal_time(objectives: dict) -> None:
    """For each objective, the curve seeds' reward after as much training time as Diffusion-DPO's
    whole run (its updates × its seconds per update, in the same run): the last curve point whose
    updates × the objective's seconds per update fit in that time (``None`` without DPO)."""
    dpo = objectives.get("diffusion_dpo")
    if dpo is None:
        return
    budget = dpo["curve"][-1][0] * dpo["seconds_per_step"]
    for summary in objectives.values():
        fits = [p for p in summary["curve"] if p[0] * summary["seconds_per_step"] <= budget * (1 + 1e-9)]
        step, reward, _ = fits[-1]
        summary["at_dpo_time"] = {"seconds": round(budget, 1), "updates": step, "curve_reward": reward}


__all__ = ["SECONDS_PARTS", "equal_time", "objective_summary", "runs_summary", "sample_summary", "step_costs", "watch"]
