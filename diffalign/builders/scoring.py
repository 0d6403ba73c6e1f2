"""Scores of the synthetic builder's groups (:mod:`diffalign.builders.synthetic`): the reward
models its command line names, each group's scores (and an ensemble's members'), their
competition ranks, and what the manifest records of the rewards.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from diffalign.data.writer import BuildError


def competition_ranks(scores: Sequence[float]) -> list[int]:
    """``[K]`` ranks of ``scores`` (higher is better): the number of strictly better scores, so
    ``[3, 5, 5, 1] -> [2, 0, 0, 3]``."""
    return [sum(other > s for other in scores) for s in scores]


def score_group(reward, images: list, prompt: str) -> tuple[list[float], dict[str, list[float]]]:
    """``(scores [K], {member label: raw scores [K]})`` of one prompt's images.

    For an :class:`~diffalign.rewards.Ensemble` the members run once and both come from those
    runs; for a single reward model the member dict holds its own score.
    """
    from diffalign.rewards import Ensemble

    if isinstance(reward, Ensemble):
        members = reward.member_scores(images, prompt)
        total = sum(w * reward.normalise(label, members[label]) for label, w in zip(reward.labels, reward.weights))
        scores = (total / sum(reward.weights)).tolist()
        return scores, {label: s.tolist() for label, s in members.items()}
    scores = reward.score(images, prompt).tolist()
    return scores, {reward.label: scores}


def reward_info(reward) -> list[dict]:
    """The manifest's ``reward_models``: each member's label and weight (and its μ, σ, if known)."""
    from diffalign.rewards import Ensemble

    if isinstance(reward, Ensemble):
        return [{"label": label, "weight": w, **reward.stats.get(label, {})} for label, w in zip(reward.labels, reward.weights)]
    return [{"label": reward.label, "weight": 1.0}]


def video_reward(reward):
    """A reward that scores videos: ``reward`` itself when it does, else ``reward`` averaged over
    every frame (:class:`~diffalign.rewards.video.FrameAveraged`)."""
    from diffalign.rewards import Ensemble
    from diffalign.rewards.video import FrameAveraged, VideoEnsemble, scores_videos

    if scores_videos(reward):
        return reward
    if isinstance(reward, Ensemble):  # still an ensemble, so each member's raw score is recorded
        stats = {f"{m.label}@frames:all": reward.stats[m.label] for m in reward.members if m.label in reward.stats}
        return VideoEnsemble(reward.members, reward.weights, stats, frames="all")
    return FrameAveraged(reward, frames="all")


def key_values(items: Sequence[str] | None, what: str) -> dict[str, str]:
    """``{NAME: VALUE}`` of repeated ``NAME=VALUE`` options (``what`` names the option in the error)."""
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise BuildError(f"{what} takes NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def load_reward_from_args(args: argparse.Namespace):
    """A single reward model, or an :class:`Ensemble` of several (their μ, σ from ``--reward-stats``)."""
    import torch
    from accelerate import PartialState

    from diffalign.rewards import load_ensemble, load_reward

    paths = key_values(args.reward_path, "--reward-path")
    weights = {name: float(w) for name, w in key_values(args.reward_weight, "--reward-weight").items()}
    unknown = sorted((set(paths) | set(weights)) - set(args.reward))
    if unknown:
        raise BuildError(f"--reward-path/--reward-weight name {unknown}, which are not among --reward {args.reward}")
    device = PartialState(cpu=not torch.cuda.is_available()).device  # this process's GPU under accelerate
    if len(args.reward) == 1 and not args.reward_stats:
        return load_reward(args.reward[0], paths.get(args.reward[0]), device=device)
    if not args.reward_stats:
        raise BuildError("several rewards are z-normalised before averaging: give --reward-stats FILE.json "
                         "({label: {mean, std}}, e.g. from `diffalign score` on a reference set)")
    stats = json.loads(Path(args.reward_stats).read_text())
    return load_ensemble({name: weights.get(name, 1.0) for name in args.reward}, stats, paths, device=device)

