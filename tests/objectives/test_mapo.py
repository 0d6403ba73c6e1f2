"""MaPO: the bounded link g, hand-computed losses, and reference independence."""

import math

import pytest
import torch

from diffalign.objectives import MaPO, MaPOConfig, ObjectiveDataError, PreferenceTerms
from diffalign.objectives.mapo import mapo_link


def g(x):
    """x / (e^x − 1) with its limit 1 at 0, in double precision."""
    return 1.0 if x == 0 else x / math.expm1(x)


def log_sigmoid(z):
    return -math.log1p(math.exp(-z))


def t64(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_defaults_follow_the_official_code():
    cfg = MaPO().config
    assert (cfg.beta_mapo, cfg.snr_value, cfg.margin_scale) == (0.1, 0.5, 1000.0)
    assert not MaPO.needs_reference and MaPO.min_group_size == MaPO.max_group_size == 2


def test_link_hand_values():
    """g(0.1) = 0.1 / (e^0.1 − 1) = 0.1 / 0.10517092 = 0.95083319; g(1) = 1/(e − 1) = 0.58197671;
    g(−1) = −1 / (e^−1 − 1) = 1.58197671 (= g(1) + 1)."""
    x = t64([0.1, 1.0, -1.0, 5.0])
    expected = [0.1 / (math.exp(0.1) - 1), 1 / (math.e - 1), -1 / (math.exp(-1) - 1), 5 / (math.exp(5) - 1)]
    assert mapo_link(x).tolist() == pytest.approx(expected, rel=1e-12)
    assert mapo_link(t64([0.1])).item() == pytest.approx(0.95083319, abs=1e-8)
    assert mapo_link(t64([1.0])).item() == pytest.approx(0.58197671, abs=1e-8)


def test_link_at_zero_and_its_continuity():
    """g(0) = 1; on both sides of the series switch (|x| = 1e-2) g matches the double-precision formula;
    g'(0) = −1/2 (series 1 − x/2 + …)."""
    assert mapo_link(torch.zeros(3)).tolist() == [1.0, 1.0, 1.0]
    xs = [0.0, 1e-12, -1e-9, 1e-6, 9.99e-3, 1e-2, 1.001e-2, -1e-2, 0.05, 0.5, 3.0]
    got = mapo_link(t64(xs)).tolist()
    assert got == pytest.approx([g(x) for x in xs], rel=1e-13)
    got32 = mapo_link(torch.tensor(xs, dtype=torch.float32)).tolist()
    assert got32 == pytest.approx([g(x) for x in xs], rel=1e-6)
    x = torch.tensor([0.0, 1e-7, -1e-7, 0.02], requires_grad=True)
    (grad,) = torch.autograd.grad(mapo_link(x).sum(), x)
    assert torch.isfinite(grad).all()
    # g'(x) = −1/2 + x/6 − …, so −0.5 at 0 and −0.5 + 0.02/6 at 0.02
    assert grad.tolist() == pytest.approx([-0.5, -0.5, -0.5, -0.5 + 0.02 / 6], abs=1e-5)


def test_hand_loss_small_scale():
    """err_w = 0.2, err_l = 0.4, γ = 0.5, T = 10, λ = 0.1:
    g(0.1) = 0.95083319, g(0.2) = 0.2/(e^0.2 − 1) = 0.90333111, margin = 10 · 0.04750208 = 0.4750208,
    loss = 0.2 − 0.1 · log σ(0.4750208) = 0.2 + 0.1 · ln(1 + e^−0.4750208) = 0.2 + 0.1 · 0.4835811 = 0.2483581."""
    out = MaPO(MaPOConfig(margin_scale=10.0)).loss(PreferenceTerms(policy_err=t64([[0.2, 0.4]])))
    margin = 10 * (g(0.1) - g(0.2))
    assert out.metrics["margin"].item() == pytest.approx(margin, rel=1e-10)
    assert margin == pytest.approx(0.4750208, abs=1e-7)
    assert out.loss.item() == pytest.approx(0.2 - 0.1 * log_sigmoid(margin), rel=1e-10)
    assert out.loss.item() == pytest.approx(0.2483581, abs=1e-7)


def test_hand_loss_defaults_batch_of_two():
    """Defaults (λ 0.1, γ 0.5, T 1000). Pair 1: err 0.100 / 0.104 ⇒ margin = 1000 (g(0.05) − g(0.052))
    = 1000 (0.9752083 − 0.9742253) = 0.98300; pair 2: err 0.3 / 0.2 ⇒ margin = 1000 (g(0.15) − g(0.1))
    = −23.959 (the rejected image fits better).
    loss = 0.2 − 0.1 · (log σ(0.98300) + log σ(−23.959)) / 2 = 0.2 + 0.1 · (0.31786 + 23.959) / 2 = 1.41384;
    implicit_acc = 1/2; err_w = 0.2; err_l = 0.152."""
    out = MaPO().loss(PreferenceTerms(policy_err=t64([[0.100, 0.104], [0.3, 0.2]])))
    m1, m2 = 1000 * (g(0.05) - g(0.052)), 1000 * (g(0.15) - g(0.1))
    assert m1 == pytest.approx(0.98300, abs=1e-5) and m2 == pytest.approx(-23.959, abs=1e-3)
    expected = (0.100 + 0.3) / 2 - 0.1 * (log_sigmoid(m1) + log_sigmoid(m2)) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-10)
    assert out.loss.item() == pytest.approx(1.41384, abs=1e-5)
    m = out.metrics
    assert m["implicit_acc"].item() == 0.5
    assert m["margin"].item() == pytest.approx((m1 + m2) / 2, rel=1e-10)
    assert m["err_w"].item() == pytest.approx(0.2) and m["err_l"].item() == pytest.approx(0.152)
    assert "ref_gap" not in m


def test_margin_sign_follows_the_errors():
    """g decreases, so margin > 0 exactly when err_w < err_l."""
    out = MaPO().loss(PreferenceTerms(policy_err=t64([[0.1, 0.2], [0.2, 0.1], [0.15, 0.15]])))
    assert out.metrics["implicit_acc"].item() == pytest.approx(1 / 3)


def test_lambda_zero_is_sft_on_the_preferred_image():
    err = t64([[0.3, 0.1], [0.2, 0.5]])
    out = MaPO(MaPOConfig(beta_mapo=0.0)).loss(PreferenceTerms(policy_err=err))
    assert out.loss.item() == pytest.approx(0.25, rel=1e-12)


def test_reference_errors_are_ignored():
    torch.manual_seed(0)
    err = (0.1 + 0.01 * torch.rand(4, 2)).requires_grad_()
    ref = torch.rand(4, 2, requires_grad=True)
    without = MaPO().loss(PreferenceTerms(policy_err=err))
    with_ref = MaPO().loss(PreferenceTerms(policy_err=err, ref_err=ref))
    assert with_ref.loss.item() == without.loss.item()
    assert with_ref.metrics.keys() == without.metrics.keys()
    with_ref.loss.backward()
    assert ref.grad is None


def test_rejects_groups_and_bad_config():
    with pytest.raises(ObjectiveDataError, match="mapo needs K = 2"):
        MaPO().loss(PreferenceTerms(policy_err=torch.zeros(1, 3)))
    for bad in ({"beta_mapo": -0.1}, {"snr_value": 0.0}, {"margin_scale": -1.0}):
        with pytest.raises(ValueError):
            MaPOConfig(**bad)
