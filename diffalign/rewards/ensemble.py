"""An ensemble of reward models: each member's score z-normalised, then a weighted mean.

    ensemble = Σ_i w_i · (s_i − μ_i) / σ_i  /  Σ_i w_i

``μ_i, σ_i`` (population standard deviation) are statistics the user supplies (e.g. published
ones, or saved from an earlier run) or :meth:`Ensemble.calibrate` computes on a reference set of
images and prompts. z-normalising first puts PickScore (≈ 21 ± 1), HPS (≈ 27 ± 2), ImageReward
(≈ 0 ± 1) and the aesthetic score (≈ 6 ± 0.5) on one scale, so a weight means the same for each.
Used by the synthetic-ranking builder and SmPO.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from diffalign.rewards.base import RewardModel, batch_size_of, expand_prompts


class Ensemble(RewardModel):
    """Weighted mean of z-normalised member scores.

    Args:
        members: the reward models (their labels must differ).
        weights: one positive weight per member (default: equal).
        stats: ``{label: {"mean": μ, "std": σ}}`` per member; missing ones must come from
            :meth:`calibrate` before scoring.
    """

    name = "ensemble"

    def __init__(self, members: Sequence[RewardModel], weights: Sequence[float] | None = None,
                 stats: Mapping[str, Mapping[str, float]] | None = None):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.labels = [m.label for m in members]
        if not members or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"an ensemble needs distinct members; got {self.labels}")
        self.weights = [float(w) for w in (weights if weights is not None else [1.0] * len(members))]
        if len(self.weights) != len(members) or any(not w > 0 for w in self.weights):
            raise ValueError(f"give one positive weight per member; got {self.weights} for {self.labels}")
        self.stats = {label: {"mean": float(s["mean"]), "std": float(s["std"])} for label, s in (stats or {}).items()}
        self.uses_prompts = any(m.uses_prompts for m in members)

    @property
    def label(self) -> str:
        return "ensemble(" + ",".join(f"{label}:{w:g}" for label, w in zip(self.labels, self.weights)) + ")"

    def member_scores(self, images, prompts: str | Sequence[str] | None = None) -> dict[str, Tensor]:
        """``{label: [B] raw score}`` of every member."""
        return {label: member.score(images, prompts) for label, member in zip(self.labels, self.members)}

    def normalise(self, label: str, scores: Tensor) -> Tensor:
        """``(s − μ) / σ`` with the member's statistics."""
        if label not in self.stats:
            raise ValueError(f"no statistics for {label!r}: pass stats= or call calibrate() on a reference set first")
        return (scores - self.stats[label]["mean"]) / self.stats[label]["std"]

    def score(self, images, prompts: str | Sequence[str] | None = None) -> Tensor:
        """``[B]`` weighted mean of the members' z-scores."""
        scores = self.member_scores(images, prompts)
        total = sum(w * self.normalise(label, scores[label]) for label, w in zip(self.labels, self.weights))
        return total / sum(self.weights)

    def preference_logits(self, images, prompts: str | Sequence[str] | None = None) -> Tensor:
        return self.score(images, prompts)

    @torch.no_grad()
    def calibrate(self, images, prompts: str | Sequence[str] | None = None, batch_size: int = 16) -> dict:
        """Set every member's ``μ, σ`` from its scores on a reference set; returns the statistics.

        Raises:
            ValueError: fewer than two images, or a member that scores them all the same.
        """
        count = batch_size_of(images)
        prompts = expand_prompts(prompts, count, needed=self.uses_prompts)
        if count < 2:
            raise ValueError("calibrating needs at least two reference images")
        chunks: dict[str, list[Tensor]] = {label: [] for label in self.labels}
        for start in range(0, count, batch_size):
            batch = slice(start, start + batch_size)
            for label, scores in self.member_scores(images[batch], prompts[batch]).items():
                chunks[label].append(scores)
        for label, parts in chunks.items():
            scores = torch.cat(parts).double()  # float32 sums of ~1e3 scores lose digits
            std = scores.std(correction=0).item()
            if not std > 0:
                raise ValueError(f"{label} gives every reference image the same score; it cannot be normalised")
            self.stats[label] = {"mean": scores.mean().item(), "std": std}
        return dict(self.stats)


def load_ensemble(weights: Mapping[str, float], stats: Mapping[str, Mapping[str, float]] | None = None,
                  paths: Mapping[str, str] | None = None, **load_kwargs) -> Ensemble:
    """An :class:`Ensemble` of registered rewards: ``weights`` maps reward names to weights,
    ``paths`` optional weights locations per name, ``load_kwargs`` (dtype, device) go to each."""
    from diffalign.rewards import load_reward

    paths = paths or {}
    members = [load_reward(name, paths.get(name), **load_kwargs) for name in weights]
    return Ensemble(members, list(weights.values()), stats)
