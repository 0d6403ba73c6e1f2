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


# ------------------------------------------------------------------------------ the registered objectives
def _terms(logp, old, adv, kl=None, weights=None):
    from diffalign.objectives import PreferenceTerms

    return PreferenceTerms(policy_logp=logp[:, None], old_logp=old[:, None], advantages=adv[:, None],
                           kl=None if kl is None else kl[:, None], t=torch.rand(len(logp)), weights=weights)


@pytest.mark.parametrize("name", ["grpo", "dance_grpo"])
def test_registered_online_objectives_build_with_their_defaults(name):
    from diffalign.objectives import OBJECTIVES, build_objective

    built = build_objective({"name": name})
    assert type(built) is OBJECTIVES[name] and built.step == "online" and built.per_image == "logp"
    # both train on a dataset's prompts only: any K, prompt-only datasets (K = 0) too
    for k in (0, 1, 2, 7):
        built.check_data(group_size=k, has_captions=False, has_ranks=False)
    assert built.needs_reference is (name == "grpo")  # DanceGRPO has no KL, so no reference


def test_dance_grpo_defaults_are_its_papers():
    from diffalign.objectives import build_objective

    built = build_objective({"name": "dance_grpo"})
    assert (built.config.beta, built.config.advantage_std, built.config.per_reward_advantages) == (0.0, "group", True)
    assert built.step_defaults == {"noise": "dance_sde", "shared_noise": True, "trained": "random",
                                   "train_fraction": 0.6, "detach_uncond": False}
    assert build_objective({"name": "grpo", "beta": 0.0}).needs_reference is False


def test_the_grpo_loss_by_hand_with_the_kl_and_padding():
    """ρ = 1, A = (2, −1, 3), weight of the last 0 (padding); β = 0.5, kl = (0.2, 0.4, 9):
    surrogate −(2 − 1)/2 = −0.5, KL mean 0.3, loss −0.5 + 0.5·0.3 = −0.35."""
    from diffalign.objectives import build_objective

    objective = build_objective({"name": "grpo", "beta": 0.5, "clip_range": 0.1})
    logp = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    out = objective.loss(_terms(logp, logp.detach().clone(), torch.tensor([2.0, -1.0, 3.0]),
                                kl=torch.tensor([0.2, 0.4, 9.0]), weights=torch.tensor([1.0, 1.0, 0.0])))
    assert out.loss.item() == pytest.approx(-0.35, abs=1e-6)
    assert out.metrics["kl"].item() == pytest.approx(0.3, abs=1e-6) and not out.metrics["loss"].requires_grad
    out.loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([-1.0, 0.5, 0.0]))  # −A·w/Σw; padding gets none


def test_grpo_with_a_kl_needs_the_kl_term():
    from diffalign.objectives import build_objective

    logp = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="kl"):
        build_objective({"name": "grpo"}).loss(_terms(logp, torch.zeros(2), torch.ones(2)))
    assert build_objective({"name": "dance_grpo"}).loss(_terms(logp, torch.zeros(2), torch.ones(2))).loss.item() == -1.0


def test_the_loss_falls_when_a_good_sample_becomes_likelier():
    from diffalign.objectives import build_objective

    objective = build_objective({"name": "dance_grpo", "clip_range": 0.5})
    old, adv = torch.tensor([-1.0, -1.0]), torch.tensor([1.0, -1.0])
    before = objective.loss(_terms(old.clone(), old, adv)).loss.item()
    after = objective.loss(_terms(torch.tensor([-0.9, -1.0]), old, adv)).loss.item()
    assert after < before


def test_per_reward_advantages_sum_each_rewards_own():
    """Two rewards on one group of 2: r1 = (0, 2), r2 = (10, 10). Summed first (w = 1, 1): totals
    (10, 12), group std 1, A = (−1, 1)·1/(1 + 1e-4). Per reward: r2 has no spread (0), r1 gives
    A = (−1, 1)/(1 + 1e-4); the same here, but r2 scaled by 100 changes only the summed form."""
    from diffalign.objectives.grpo import combined_advantages

    r = {"a": torch.tensor([[0.0, 2.0]]), "b": torch.tensor([[10.0, 10.0]])}
    expected = torch.tensor([[-1.0, 1.0]], dtype=torch.float64) / (1 + 1e-4)
    summed, zero = combined_advantages(r, {"a": 1.0, "b": 1.0}, "group")
    torch.testing.assert_close(summed, expected)
    each, zero_each = combined_advantages(r, {"a": 1.0, "b": 1.0}, "group", per_reward=True)
    torch.testing.assert_close(each, expected)
    assert not zero.any() and not zero_each.any()
    # a second reward on another scale: per-reward advantages weigh each reward equally
    r["b"] = torch.tensor([[300.0, 100.0]])
    summed = combined_advantages(r, {"a": 1.0, "b": 1.0}, "group")[0]
    each = combined_advantages(r, {"a": 1.0, "b": 1.0}, "group", per_reward=True)[0]
    torch.testing.assert_close(summed, torch.tensor([[1.0, -1.0]], dtype=torch.float64) / (1 + 1e-4 / 99))
    torch.testing.assert_close(each, torch.zeros(1, 2, dtype=torch.float64), atol=1e-3, rtol=0)
