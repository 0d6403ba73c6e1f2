"""Diffusion-DPO: hand-computed values (arithmetic in each docstring) and its sanity anchors."""

import math

import pytest
import torch

from diffalign.objectives import DiffusionDPO, DiffusionDPOConfig, ObjectiveDataError, PreferenceTerms


def t64(rows):
    return torch.tensor(rows, dtype=torch.float64)


def softplus(z):
    return math.log1p(math.exp(z))


def test_defaults_follow_the_official_launchers():
    cfg = DiffusionDPO().config
    assert cfg.beta == 5000.0 and cfg.loss_type == "sigmoid"
    assert DiffusionDPO.needs_reference and DiffusionDPO.min_group_size == DiffusionDPO.max_group_size == 2


def test_hand_value_one_pair():
    """err_w = 0.10, err_l = 0.12, ref 0.11 / 0.11, β = 100:
    d_θ = −0.02, d_ref = 0, margin = −(100/2)(−0.02 − 0) = 1, loss = ln(1 + e^−1) = 0.313262."""
    out = DiffusionDPO(DiffusionDPOConfig(beta=100)).loss(
        PreferenceTerms(policy_err=t64([[0.10, 0.12]]), ref_err=t64([[0.11, 0.11]])))
    assert out.loss.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-9)
    assert out.loss.item() == pytest.approx(0.313262, abs=1e-6)
    assert out.metrics["margin"].item() == pytest.approx(1.0, rel=1e-9)
    assert out.metrics["implicit_acc"].item() == 1.0


def test_hand_value_default_beta():
    """β = 5000 (default): err_w = 0.1000, err_l = 0.1004, ref 0.1 / 0.1:
    d_θ = −0.0004, margin = 2500 · 0.0004 = 1, loss = ln(1 + e^−1)."""
    out = DiffusionDPO().loss(PreferenceTerms(policy_err=t64([[0.1000, 0.1004]]), ref_err=t64([[0.1, 0.1]])))
    assert out.loss.item() == pytest.approx(softplus(-1.0), rel=1e-9)


def test_hand_value_batch_of_two_and_metrics():
    """β = 100. Pair 1: margin 1 (as above). Pair 2: err 0.20 / 0.10, ref 0.15 / 0.15:
    d_θ = 0.1, margin = −50 · 0.1 = −5, loss = ln(1 + e^5) = 5.006715.
    mean loss = (0.313262 + 5.006715) / 2; implicit_acc = 1/2; margin mean = (1 − 5)/2 = −2;
    err_w = (0.10 + 0.20)/2 = 0.15; err_l = (0.12 + 0.10)/2 = 0.11; ref_gap = 0."""
    out = DiffusionDPO(DiffusionDPOConfig(beta=100)).loss(PreferenceTerms(
        policy_err=t64([[0.10, 0.12], [0.20, 0.10]]), ref_err=t64([[0.11, 0.11], [0.15, 0.15]])))
    assert out.loss.item() == pytest.approx((softplus(-1.0) + softplus(5.0)) / 2, rel=1e-9)
    m = out.metrics
    assert m["implicit_acc"].item() == 0.5
    assert m["margin"].item() == pytest.approx(-2.0, rel=1e-9)
    assert m["err_w"].item() == pytest.approx(0.15)
    assert m["err_l"].item() == pytest.approx(0.11)
    assert m["ref_gap"].item() == pytest.approx(0.0, abs=1e-12)


def test_reference_gap_enters_the_margin():
    """err 0.10 / 0.10 (d_θ = 0), ref 0.10 / 0.12 (d_ref = −0.02), β = 100:
    margin = −50 · (0 − (−0.02)) = −1, loss = ln(1 + e^1) = 1.313262; ref_gap = −0.02."""
    out = DiffusionDPO(DiffusionDPOConfig(beta=100)).loss(
        PreferenceTerms(policy_err=t64([[0.10, 0.10]]), ref_err=t64([[0.10, 0.12]])))
    assert out.loss.item() == pytest.approx(softplus(1.0), rel=1e-9)
    assert out.metrics["ref_gap"].item() == pytest.approx(-0.02, rel=1e-9)


def test_policy_equal_to_reference_gives_ln2_and_the_right_gradient():
    """θ = ref ⇒ margin 0 ⇒ loss = ln 2 for any errors and β. d loss / d err_w = σ(0) · β/2 / B = β/(4B):
    with β = 100, B = 3 the gradient is +25/3 on err_w and −25/3 on err_l."""
    torch.manual_seed(0)
    err = (0.1 + 0.05 * torch.rand(3, 2, dtype=torch.float64)).requires_grad_()
    out = DiffusionDPO(DiffusionDPOConfig(beta=100)).loss(PreferenceTerms(policy_err=err, ref_err=err.detach()))
    assert out.loss.item() == pytest.approx(math.log(2), rel=1e-12)
    out.loss.backward()
    assert torch.allclose(err.grad[:, 0], torch.full((3,), 25 / 3, dtype=torch.float64))
    assert torch.allclose(err.grad[:, 1], torch.full((3,), -25 / 3, dtype=torch.float64))


def test_swapping_winner_and_loser_flips_the_margin():
    """softplus(−m) − softplus(m) = −m, so loss(w, l) − loss(l, w) = −margin for one pair."""
    torch.manual_seed(1)
    err, ref = 0.1 + 0.001 * torch.randn(2, 1, 2, dtype=torch.float64)
    obj = DiffusionDPO()
    a = obj.loss(PreferenceTerms(policy_err=err, ref_err=ref))
    b = obj.loss(PreferenceTerms(policy_err=err.flip(1), ref_err=ref.flip(1)))
    assert b.metrics["margin"].item() == pytest.approx(-a.metrics["margin"].item(), rel=1e-9)
    assert a.loss.item() - b.loss.item() == pytest.approx(-a.metrics["margin"].item(), rel=1e-6)


def test_hinge_loss():
    """hinge: relu(1 − margin). β = 100: err 0.10 / 0.12 ⇒ margin 1 ⇒ 0;
    err 0.10 / 0.11 ⇒ margin 0.5 ⇒ 0.5; mean = 0.25."""
    out = DiffusionDPO(DiffusionDPOConfig(beta=100, loss_type="hinge")).loss(PreferenceTerms(
        policy_err=t64([[0.10, 0.12], [0.10, 0.11]]), ref_err=t64([[0.1, 0.1], [0.1, 0.1]])))
    assert out.loss.item() == pytest.approx(0.25, rel=1e-9)


def test_rejects_groups_and_a_missing_reference():
    with pytest.raises(ObjectiveDataError, match="diffusion_dpo needs K = 2"):
        DiffusionDPO().loss(PreferenceTerms(policy_err=torch.zeros(2, 3), ref_err=torch.zeros(2, 3)))
    with pytest.raises(ValueError, match="ref_err"):
        DiffusionDPO().loss(PreferenceTerms(policy_err=torch.zeros(2, 2)))
    with pytest.raises(ValueError, match="ref_err has shape"):
        DiffusionDPO().loss(PreferenceTerms(policy_err=torch.zeros(2, 2), ref_err=torch.zeros(3, 2)))


@pytest.mark.parametrize("bad", [{"beta": 0.0}, {"beta": -1.0}, {"loss_type": "ipo"}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        DiffusionDPOConfig(**bad)


def test_half_precision_errors_are_upcast():
    """bf16 cannot hold 0.1004 − 0.1000 well; the objective computes in float32 (loss dtype float32)."""
    err = torch.tensor([[0.1000, 0.1004]], dtype=torch.bfloat16)
    out = DiffusionDPO().loss(PreferenceTerms(policy_err=err, ref_err=err.clone()))
    assert out.loss.dtype == torch.float32
    assert out.loss.item() == pytest.approx(math.log(2), rel=1e-6)
