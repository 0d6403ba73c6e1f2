"""Evaluation: statistics for checkpoint-vs-base comparisons (more arrives with issue #8)."""

from diffalign.evaluation.stats import Interval, bootstrap_mean, paired_gain, win_rate

__all__ = ["Interval", "bootstrap_mean", "paired_gain", "win_rate"]
