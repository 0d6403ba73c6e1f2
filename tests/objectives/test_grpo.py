"""Flow-GRPO's maths, hand-computed: advantages with the global and the per-group std (numpy's
population std), the ±5 clip and zero-spread groups, the clipped surrogate and its logs, the KL."""

import math

import pytest
import torch

from diffalign.objectives.grpo import GRPOConfig, clipped_surrogate, group_advantages, step_kl

REWARDS = torch.tensor([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]])


def test_advantages_with_the_global_std():
    """All six rewards: population std √(2/6) = 0.577350; group 1's mean is 2, so its advantages
    are ±1/(0.577350 + 1e-4) = ±1.731751; group 2 has no spread: 0."""
    adv, zero = group_advantages(REWARDS, "global")
    expected = torch.tensor([[-1.731751, 0.0, 1.731751], [0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(adv, expected, atol=1e-6, rtol=0)
    assert zero.tolist() == [False, True]


def test_advantages_with_the_group_std():
    """Group 1's population std √(2/3) = 0.816497: ±1/0.816597 = ±1.224595."""
    adv, _ = group_advantages(REWARDS, "group")
    torch.testing.assert_close(adv[0], torch.tensor([-1.224595, 0.0, 1.224595], dtype=torch.float64), atol=1e-6, rtol=0)
    assert adv[1].eq(0).all()


def test_equal_rewards_that_do_not_average_exactly_still_give_zero():
    # 0.1 three times: the float mean is 0.10000000000000002, not 0.1.
    adv, zero = group_advantages(torch.tensor([[0.1, 0.1, 0.1], [0.0, 0.5, 1.0]], dtype=torch.float64), "group")
    assert zero.tolist() == [True, False] and adv[0].eq(0).all() and adv[1].abs().sum() > 0
    assert adv.sum(dim=1).abs().max() < 1e-12  # advantages sum to 0 in each group


def test_the_clipped_surrogate_by_hand():
    """ε = 0.2. A = +1 with ρ = 1.5: max(−1.5, −1.2) = −1.2; A = −1 with ρ = 0.5: max(0.5, 0.8)
    = 0.8; the loss is their mean −0.2. Both ratios lie outside 1 ± ε: clipfrac 1;
    approx_kl = ½·mean(ln²1.5, ln²0.5) = 0.161214."""
    old = torch.tensor([-1.0, -2.0])
    logp = (old + torch.log(torch.tensor([1.5, 0.5]))).requires_grad_()
    loss, metrics = clipped_surrogate(logp, old, torch.tensor([1.0, -1.0]), clip_range=0.2)
    assert loss.item() == pytest.approx(-0.2, abs=1e-6)
    assert metrics["clipfrac"].item() == 1.0
    assert metrics["approx_kl"].item() == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 2, abs=1e-6)
    assert metrics["ratio_mean"].item() == pytest.approx(1.0, abs=1e-6)
    loss.backward()
    assert logp.grad.abs().max() == 0  # both terms clipped: no gradient


def test_at_ratio_one_the_loss_raises_the_likelihood_of_good_samples():
    """Before any update ρ = 1: the loss is −mean(A') with A' clipped to ±5, and its gradient
    is −A'/N, so gradient descent raises the log-probability of positive-advantage samples."""
    old = torch.tensor([-1.0, -1.0, -1.0])
    logp = old.clone().requires_grad_()
    loss, metrics = clipped_surrogate(logp, old, torch.tensor([7.0, -2.0, 0.5]), clip_range=1e-4)
    assert loss.item() == pytest.approx(-(5.0 - 2.0 + 0.5) / 3, abs=1e-6)
    assert metrics["clipfrac"].item() == 0.0 and metrics["approx_kl"].item() == 0.0
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([-5.0, 2.0, -0.5]) / 3)


def test_the_kl_is_zero_at_the_reference_and_by_hand():
    mean = torch.randn(2, 4, 2, 2)
    assert step_kl(mean, mean.clone(), torch.tensor([0.5, 0.3])).eq(0).all()
    # (μ_θ − μ_ref)² = 0.01 everywhere, std 0.5: 0.01/(2·0.25) = 0.02.
    torch.testing.assert_close(step_kl(mean + 0.1, mean, torch.tensor([0.5, 0.5])), torch.tensor([0.02, 0.02]))


@pytest.mark.parametrize("bad", [{"beta": -1.0}, {"clip_range": 0.0}, {"adv_clip": 0.0}, {"advantage_std": "prompt"}])
def test_the_config_is_checked(bad):
    with pytest.raises(ValueError):
        GRPOConfig(**bad)
