"""DiffusionNFT's maths (diffalign.objectives.diffusion_nft): hand-computed values, the official
v-form on a flow, and behaviour (the loss pulls toward the clean sample when r = 1, away when r = 0)."""

import pytest
import torch

from diffalign.objectives.diffusion_nft import (nft_loss, old_decay, optimality_probability, prediction_kl,
                                                soft_update_)

ADV = torch.tensor([-7.0, -5.0, -2.5, 0.0, 2.5, 7.0])


@pytest.mark.parametrize("mode, expected", [
    ("all", [0.0, 0.0, 0.25, 0.5, 0.75, 1.0]),
    ("positive_only", [0.5, 0.5, 0.5, 0.5, 0.75, 1.0]),
    ("negative_only", [0.0, 0.0, 0.25, 0.5, 0.5, 0.5]),
    ("one_only", [0.5, 0.5, 0.5, 0.5, 0.6, 0.6]),  # 1/5/2 + 1/2 where positive
    ("binary", [0.4, 0.4, 0.4, 0.5, 0.6, 0.6]),  # ±1/5/2 + 1/2, sign(0) = 0
])
def test_the_advantage_becomes_an_optimality_probability_in_every_mode(mode, expected):
    assert optimality_probability(ADV, adv_clip=5.0, mode=mode).tolist() == pytest.approx(expected)


def test_an_unknown_adv_mode_is_named():
    with pytest.raises(ValueError, match="adv_mode must be one of all, positive_only"):
        optimality_probability(ADV, mode="positive")


@pytest.mark.parametrize("decay_type, updates, expected", [
    (0, 0, 0.0), (0, 10_000, 0.0),
    (1, 0, 0.0), (1, 100, 0.1), (1, 600, 0.5),  # 0.001·u, at most 0.5
    (2, 74, 0.0), (2, 75, 0.0), (2, 175, 0.75), (2, 300, 0.999),  # flat for 75, then 0.0075·(u − 75) ≤ 0.999
])
def test_the_old_weights_decay_follows_each_official_schedule(decay_type, updates, expected):
    assert old_decay(updates, decay_type) == pytest.approx(expected)
    with pytest.raises(ValueError, match="decay_type must be one of"):
        old_decay(1, 3)


def test_the_soft_update_moves_the_old_weights_toward_the_trained_ones():
    old, trained = [torch.tensor([1.0, 2.0])], [torch.tensor([3.0, 6.0])]
    soft_update_(old, trained, decay=0.25)
    assert old[0].tolist() == [2.5, 5.0] and trained[0].tolist() == [3.0, 6.0]  # 0.25·old + 0.75·trained
    soft_update_(old, trained, decay=0.0)
    assert old[0].tolist() == [3.0, 6.0]  # decay_type 0: a copy
    with pytest.raises(ValueError, match="1 old and 2 trained tensors"):
        soft_update_(old, trained * 2, 0.5)


def _case():
    x0 = torch.zeros(1, 2, dtype=torch.float64)
    old = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    policy = torch.tensor([[1.0, -1.0]], dtype=torch.float64, requires_grad=True)
    return policy, old, x0


@pytest.mark.parametrize("r, beta, expected", [
    # β = 1: x̂₊ = policy = [1, −1], w₊ = 1, L₊ = 1; x̂₋ = 2·old − policy = [0, 2], w₋ = 1, L₋ = 2.
    (1.0, 1.0, 5 * 1.0), (0.0, 1.0, 5 * 2.0), (0.25, 1.0, 5 * (0.25 * 1 + 0.75 * 2)),
    # β = 0.5: x̂₊ = [0.75, −0.25], w₊ = 0.5, L₊ = 0.3125/0.5; x̂₋ = [0.25, 1.25], w₋ = 0.75, L₋ = 0.8125/0.75.
    (1.0, 0.5, 5 * 0.625 / 0.5), (0.0, 0.5, 5 * (0.8125 / 0.75) / 0.5),
])
def test_loss_equals_the_hand_computed_value(r, beta, expected):
    policy, old, x0 = _case()
    loss, metrics = nft_loss(policy, old, x0, torch.tensor([r]), beta, adv_clip=5.0)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert metrics["r_mean"].item() == r


def test_r_one_is_the_positive_term_alone_and_padding_weighs_nothing():
    policy, old, x0 = _case()
    two = lambda t: torch.cat([t, t + 3])  # noqa: E731  a second, very different sample
    loss, _ = nft_loss(two(policy), two(old), two(x0), torch.tensor([1.0, 0.0]), 1.0, weights=torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx(5.0)


def test_the_gradient_at_the_old_weights_is_2r_minus_1_times_the_weighted_denoising_gradient():
    """At θ = old both implicit policies are the old one, so for every β the gradient is
    A·(2r − 1)·∂/∂x̂₀ [mean (x̂₀ − x0)²/w] with w held fixed: pulled toward x0 at r = 1, pushed
    away at r = 0, none at r = ½. A weight that carried a gradient would change it."""
    x0 = torch.tensor([[0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    old = torch.tensor([[1.0, -2.0, 0.5, 0.5]], dtype=torch.float64)
    w = 1.0  # mean |old − x0|
    for beta in (1.0, 0.1, 1e-3):
        for r in (1.0, 0.0, 0.5, 0.8):
            policy = old.clone().requires_grad_(True)
            loss, _ = nft_loss(policy, old, x0, torch.tensor([r], dtype=torch.float64), beta, adv_clip=5.0)
            loss.backward()
            expected = 5.0 * (2 * r - 1) * 2 * (old - x0) / (w * 4)
            torch.testing.assert_close(policy.grad, expected, rtol=1e-9, atol=1e-12)


def test_a_step_down_the_loss_moves_toward_x0_when_r_is_1_and_away_when_0():
    x0 = torch.zeros(3, 8, dtype=torch.float64)
    old = torch.randn(3, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for r, closer in ((1.0, True), (0.0, False)):
        policy = old.clone().requires_grad_(True)
        nft_loss(policy, old, x0, torch.full((3,), r), 1.0)[0].backward()
        moved = policy.detach() - 0.01 * policy.grad
        assert ((moved - x0).norm() < (old - x0).norm()) == closer


def test_on_a_flow_the_x0_form_equals_the_official_velocity_form():
    """The official loss (train_nft_sd3.py L930–962, written out here on velocities) against
    nft_loss on x̂₀ = x_t − t·v."""
    g = torch.Generator().manual_seed(1)
    n, shape = 4, (4, 3, 5)
    x0, noise = torch.randn(n, *shape, generator=g, dtype=torch.float64), torch.randn(n, *shape, generator=g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64).view(-1, 1, 1, 1)
    x_t = (1 - t) * x0 + t * noise
    v_theta = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    v_old = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    r = torch.tensor([0.0, 0.3, 0.9, 1.0], dtype=torch.float64)
    beta, adv_clip = 0.1, 5.0

    def official():
        dims = tuple(range(1, x0.ndim))
        pos = beta * v_theta + (1 - beta) * v_old
        neg = (1.0 + beta) * v_old - beta * v_theta
        x0_pos, x0_neg = x_t - t * pos, x_t - t * neg
        w_pos = (x0_pos - x0).abs().mean(dim=dims, keepdim=True).clip(min=1e-5)
        w_neg = (x0_neg - x0).abs().mean(dim=dims, keepdim=True).clip(min=1e-5)
        l_pos, l_neg = ((x0_pos - x0) ** 2 / w_pos).mean(dim=dims), ((x0_neg - x0) ** 2 / w_neg).mean(dim=dims)
        return ((r * l_pos / beta + (1.0 - r) * l_neg / beta) * adv_clip).mean()

    ours, _ = nft_loss(x_t - t * v_theta, x_t - t * v_old, x0, r, beta, adv_clip)
    assert ours.item() == pytest.approx(official().item(), rel=1e-12)


def test_on_an_epsilon_unet_the_mixed_prediction_maps_to_the_mixed_x0():
    """The docstring's derivation for ε-prediction: x̂₀((1+β)ε_old − βε_θ) = (1+β)x̂₀(ε_old) − βx̂₀(ε_θ)."""
    g = torch.Generator().manual_seed(2)
    x_t, eps_theta, eps_old = (torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
    a, s, beta = 0.6, 0.8, 0.3

    def x0_of(eps):
        return (x_t - s * eps) / a

    torch.testing.assert_close(x0_of((1 + beta) * eps_old - beta * eps_theta),
                               (1 + beta) * x0_of(eps_old) - beta * x0_of(eps_theta))
    torch.testing.assert_close(x0_of(beta * eps_theta + (1 - beta) * eps_old),
                               beta * x0_of(eps_theta) + (1 - beta) * x0_of(eps_old))


def test_the_kl_is_the_mean_squared_difference_of_the_predictions_and_beta_must_be_positive():
    p, ref = torch.tensor([[1.0, 3.0], [0.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    assert prediction_kl(p, ref).tolist() == [2.5, 2.0]  # (1 + 4)/2, (0 + 4)/2
    policy, old, x0 = _case()
    with pytest.raises(ValueError, match="beta must be > 0"):
        nft_loss(policy, old, x0, torch.tensor([1.0]), 0.0)


# ----------------------------------------------------------------------------- the registered objective
def _terms(advantage, kl=None, weights=None):
    """One sample of two latent values: x0 = 0, the policy's x̂0 (1, 3), the old weights' (1, 1)."""
    from diffalign.objectives import PreferenceTerms

    return PreferenceTerms(policy_x0=torch.tensor([[1.0, 3.0]], requires_grad=True), old_x0=torch.tensor([[1.0, 1.0]]),
                           x0=torch.zeros(1, 2), advantages=torch.tensor([[advantage]]), kl=kl, weights=weights)


@pytest.mark.parametrize("advantage, expected", [(5.0, 50 / 3), (-5.0, 10.0), (0.0, 40 / 3), (99.0, 50 / 3)])
def test_the_objective_maps_the_advantage_and_adds_nothing_without_kl(advantage, expected):
    """β = ½: x̂0₊ = ½(1, 3) + ½(1, 1) = (1, 2), w₊ = 1.5, L₊ = (1 + 4)/2/1.5 = 5/3; x̂0₋ = 1.5(1, 1) −
    ½(1, 3) = (1, 0), w₋ = ½, L₋ = ½/½ = 1. loss = A·(r·L₊ + (1 − r)·L₋)/β with A = 5: r = 1 (an
    advantage of +5, or clipped from 99) gives 50/3, r = 0 gives 10, r = ½ gives 40/3."""
    from diffalign.objectives import build_objective

    objective = build_objective({"name": "diffusion_nft", "beta": 0.5, "kl_beta": 0.0})
    assert not objective.needs_reference
    out = objective.loss(_terms(advantage))
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    assert "kl" not in out.metrics and out.metrics["r_mean"].item() == pytest.approx(min(max(advantage / 10 + 0.5, 0), 1))


def test_the_kl_is_added_with_its_weight_and_is_required():
    from diffalign.objectives import build_objective

    objective = build_objective({"name": "diffusion_nft", "beta": 0.5, "kl_beta": 0.1})
    assert objective.needs_reference
    out = objective.loss(_terms(5.0, kl=torch.tensor([[0.2]], dtype=torch.float64)))
    assert out.loss.item() == pytest.approx(50 / 3 + 0.1 * 0.2, rel=1e-12)
    assert out.metrics["kl"].item() == pytest.approx(0.2)
    with pytest.raises(ValueError, match="needs the KL term"):
        objective.loss(_terms(5.0))


def test_a_step_on_the_objective_moves_the_policy_toward_x0_for_a_good_sample():
    """At θ = old (as each collection starts), x̂0 = (1, 1) and x0 = 0: a gradient step lowers the
    policy x̂0's error for r = 1 and raises it for r = 0."""
    from dataclasses import replace

    from diffalign.objectives import build_objective

    objective = build_objective({"name": "diffusion_nft", "kl_beta": 0.0})
    for advantage, sign in ((5.0, -1), (-5.0, 1)):
        terms = replace(_terms(advantage), policy_x0=torch.tensor([[1.0, 1.0]], requires_grad=True))
        objective.loss(terms).loss.backward()
        before = terms.policy_x0.detach().pow(2).sum()
        after = (terms.policy_x0.detach() - 1e-3 * terms.policy_x0.grad).pow(2).sum()
        assert (after - before).sign().item() == sign


@pytest.mark.parametrize("key, value, message", [("beta", 0.0, "beta must be > 0"),
                                                 ("adv_mode", "best", "adv_mode: expected one of"),
                                                 ("decay_type", 3, "decay_type must be one of"),
                                                 ("kl_beta", -1.0, "kl_beta must be ≥ 0")])
def test_a_bad_config_is_named(key, value, message):
    from diffalign.objectives import build_objective

    with pytest.raises(ValueError, match=message):
        build_objective({"name": "diffusion_nft", key: value})


def test_it_is_an_online_objective_on_its_own_step():
    from diffalign.objectives import OBJECTIVES

    cls = OBJECTIVES["diffusion_nft"]
    assert cls.min_group_size == 0 and cls.max_group_size is None and cls.step == "nft" and cls.per_image == "x0"
    cls.check_data(group_size=0, has_captions=False, has_ranks=False)  # prompts only: accepted
    assert cls.step_defaults == {"guidance": 1.0}
