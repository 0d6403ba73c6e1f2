"""InPO: hand-computed values, identity with Diffusion-DPO, and the ε → v / flow error identities."""

import math

import pytest
import torch

from diffalign.objectives import (DiffusionDPO, DiffusionDPOConfig, InPO, InPOConfig, ObjectiveDataError,
                                  PreferenceTerms)


def t64(rows):
    return torch.tensor(rows, dtype=torch.float64)


def softplus(z):
    return math.log1p(math.exp(z))


def test_declarations_and_defaults():
    assert InPO().config.beta == 2000.0  # official SD1.5 launcher (SDXL: 5000)
    assert InPO.name == "inpo" and InPO.step == "inversion"
    assert InPO.needs_reference and not InPO.needs_scores
    assert InPO.min_group_size == InPO.max_group_size == 2


def test_hand_value_two_pairs_default_beta():
    """β = 2000 (β/2 = 1000).
    Pair 1: err 0.1000 / 0.1005, ref 0.1 / 0.1: d_θ = −0.0005, d_ref = 0, margin = 1000 · 0.0005 = 0.5,
    loss = ln(1 + e^−0.5) = 0.474077.
    Pair 2: err 0.1002 / 0.1000, ref 0.1001 / 0.1000: d_θ = 0.0002, d_ref = 0.0001,
    margin = −1000 · 0.0001 = −0.1, loss = ln(1 + e^0.1) = 0.744397.
    mean = 0.609237; implicit_acc = 1/2; margin mean = 0.2; err_w = 0.1001; err_l = 0.10025;
    ref_gap = (0 + 0.0001)/2 = 0.00005."""
    out = InPO().loss(PreferenceTerms(policy_err=t64([[0.1000, 0.1005], [0.1002, 0.1000]]),
                                      ref_err=t64([[0.1, 0.1], [0.1001, 0.1000]])))
    assert out.loss.item() == pytest.approx((softplus(-0.5) + softplus(0.1)) / 2, rel=1e-9)
    assert out.loss.item() == pytest.approx(0.609237, abs=1e-6)
    m = out.metrics
    assert m["implicit_acc"].item() == 0.5
    assert m["margin"].item() == pytest.approx(0.2, rel=1e-9)
    assert m["err_w"].item() == pytest.approx(0.1001, rel=1e-12)
    assert m["err_l"].item() == pytest.approx(0.10025, rel=1e-12)
    assert m["ref_gap"].item() == pytest.approx(0.00005, rel=1e-9)


def test_equals_diffusion_dpo_with_the_same_beta():
    torch.manual_seed(0)
    err = (0.1 + 1e-3 * torch.randn(6, 2, dtype=torch.float64)).requires_grad_()
    ref = 0.1 + 1e-3 * torch.randn(6, 2, dtype=torch.float64)
    a = InPO(InPOConfig(beta=3000)).loss(PreferenceTerms(policy_err=err, ref_err=ref))
    (grad_a,) = torch.autograd.grad(a.loss, err)
    b = DiffusionDPO(DiffusionDPOConfig(beta=3000)).loss(PreferenceTerms(policy_err=err, ref_err=ref))
    (grad_b,) = torch.autograd.grad(b.loss, err)
    assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-12)
    assert torch.allclose(grad_a, grad_b, rtol=1e-12, atol=0)
    assert {k: v.item() for k, v in a.metrics.items()} == pytest.approx({k: v.item() for k, v in b.metrics.items()})


def test_loss_falls_when_the_preferred_error_falls():
    ref = t64([[0.1, 0.1]])
    before = InPO().loss(PreferenceTerms(policy_err=t64([[0.1000, 0.1001]]), ref_err=ref)).loss.item()
    after = InPO().loss(PreferenceTerms(policy_err=t64([[0.0999, 0.1001]]), ref_err=ref)).loss.item()
    assert after < before


def test_policy_equal_to_reference_gives_ln2():
    err = 0.1 + 1e-3 * torch.rand(3, 2, dtype=torch.float64)
    assert InPO().loss(PreferenceTerms(policy_err=err, ref_err=err.clone())).loss.item() == pytest.approx(math.log(2))


def test_rejects_groups_and_a_missing_reference():
    with pytest.raises(ObjectiveDataError, match="inpo needs K = 2"):
        InPO().loss(PreferenceTerms(policy_err=torch.zeros(2, 3), ref_err=torch.zeros(2, 3)))
    with pytest.raises(ValueError, match="ref_err"):
        InPO().loss(PreferenceTerms(policy_err=torch.zeros(2, 2)))


@pytest.mark.parametrize("beta", [0.0, -1.0])
def test_config_rejects_bad_beta(beta):
    with pytest.raises(ValueError, match="beta"):
        InPOConfig(beta=beta)


def _mse(a, b):
    return ((a - b) ** 2).mean((1, 2, 3))


def test_v_prediction_error_is_the_eps_error_over_alpha_bar():
    """x_t = a·x0 + s·ε (a² + s² = 1), v = a·ε − s·x0. A model's ε̂ at that x_t implies
    x̂0 = (x_t − s·ε̂)/a and v̂ = a·ε̂ − s·x̂0; then ‖v̂ − v‖² = ‖ε̂ − ε‖²/a², and β on v-errors is
    β/a² on ε-errors for a pair that shares t."""
    gen = torch.Generator().manual_seed(0)
    shape = (2, 4, 8, 8)  # the pair w, l
    x0, eps, eps_hat = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(3))
    alpha_bar = 0.37
    a, s = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
    x_t = a * x0 + s * eps
    v = a * eps - s * x0
    x0_hat = (x_t - s * eps_hat) / a
    v_hat = a * eps_hat - s * x0_hat
    err_eps, err_v = _mse(eps_hat, eps), _mse(v_hat, v)
    assert torch.allclose(err_v, err_eps / alpha_bar, rtol=1e-12)
    assert torch.allclose(v_hat - v, (eps_hat - eps) / a, rtol=1e-10, atol=1e-12)
    ref_eps = err_eps.flip(0) * 0.9  # any reference errors; the v ones scale the same way
    beta = 2000.0
    on_v = InPO(InPOConfig(beta=beta)).loss(PreferenceTerms(policy_err=err_v[None], ref_err=ref_eps[None] / alpha_bar))
    on_eps = InPO(InPOConfig(beta=beta / alpha_bar)).loss(PreferenceTerms(policy_err=err_eps[None],
                                                                           ref_err=ref_eps[None]))
    assert on_v.loss.item() == pytest.approx(on_eps.loss.item(), rel=1e-10)


def test_flow_velocity_error_is_the_eps_error_over_one_minus_sigma_squared():
    """x_σ = (1 − σ)·x0 + σ·ε, v = ε − x0. From ε̂ at that x_σ: x̂0 = (x_σ − σ·ε̂)/(1 − σ), v̂ = ε̂ − x̂0;
    then ‖v̂ − v‖² = ‖ε̂ − ε‖²/(1 − σ)²."""
    gen = torch.Generator().manual_seed(1)
    shape = (2, 4, 8, 8)
    x0, eps, eps_hat = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(3))
    sigma = 0.63
    x_s = (1 - sigma) * x0 + sigma * eps
    v = eps - x0
    x0_hat = (x_s - sigma * eps_hat) / (1 - sigma)
    v_hat = eps_hat - x0_hat
    assert torch.allclose(_mse(v_hat, v), _mse(eps_hat, eps) / (1 - sigma) ** 2, rtol=1e-12)
    assert torch.allclose(v_hat - v, (eps_hat - eps) / (1 - sigma), rtol=1e-10, atol=1e-12)
