"""Paired statistics for comparing a checkpoint with its base on the same prompts and seeds."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Interval:
    """A point estimate with a 95 % bootstrap interval."""

    value: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def bootstrap_mean(values: torch.Tensor, samples: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    """Mean of ``values [N]`` with a percentile bootstrap interval (resampling the N items)."""
    values = values.detach().double().flatten().cpu()
    if values.numel() == 0:
        raise ValueError("bootstrap of an empty sample")
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(values), (samples, len(values)), generator=generator)
    means = values[picks].mean(1)
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.double)).tolist()
    return Interval(float(values.mean()), low, high)


def paired_gain(after: torch.Tensor, before: torch.Tensor, **kwargs) -> Interval:
    """Mean of ``after − before`` over paired samples, with its bootstrap interval."""
    return bootstrap_mean(after - before, **kwargs)


def pair_wins(candidate: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Per pair (any shape): 1 where the candidate scores higher, ½ on a tie, 0 otherwise."""
    return (candidate > base).double() + 0.5 * (candidate == base).double()


def win_rate(candidate: torch.Tensor, base: torch.Tensor, **kwargs) -> Interval:
    """Fraction of pairs where the candidate scores higher (ties count ½), with its interval
    (resampling pairs; average ``pair_wins`` per prompt first to resample prompts)."""
    return bootstrap_mean(pair_wins(candidate, base), **kwargs)
