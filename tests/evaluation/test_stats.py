"""Paired bootstrap statistics."""

import pytest
import torch

from diffalign.evaluation.stats import bootstrap_mean, paired_gain, win_rate


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_n():
    gen = torch.Generator().manual_seed(0)
    small = torch.randn(20, generator=gen) + 1.0
    large = torch.randn(2000, generator=gen) + 1.0
    a, b = bootstrap_mean(small), bootstrap_mean(large)
    assert a.low < a.value < a.high and b.low < b.value < b.high
    assert (b.high - b.low) < (a.high - a.low) / 5
    # Standard error of the mean of N(1, 1) over 2000 items is 0.022: the 95 % interval is ≈ ±0.044.
    assert b.high - b.low == pytest.approx(2 * 1.96 / 2000**0.5, rel=0.15)
    assert b.excludes_zero()


def test_paired_gain_and_win_rate_by_hand():
    before = torch.tensor([1.0, 2.0, 3.0, 4.0])
    after = torch.tensor([2.0, 2.0, 2.0, 6.0])
    gain = paired_gain(after, before)
    assert gain.value == pytest.approx((1 + 0 - 1 + 2) / 4)
    wins = win_rate(after, before)
    assert wins.value == pytest.approx((1 + 0.5 + 0 + 1) / 4)  # a tie counts one half
    assert bootstrap_mean(torch.zeros(10)).as_dict() == {"value": 0.0, "low": 0.0, "high": 0.0}
    assert not bootstrap_mean(torch.zeros(10)).excludes_zero()
    with pytest.raises(ValueError):
        bootstrap_mean(torch.tensor([]))
