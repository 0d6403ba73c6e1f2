"""SmPO: hand-computed values, the γ(2p − 1) = 1 reduction to Diffusion-DPO, ties, swap symmetry."""

import math

import pytest
import torch

from diffalign.objectives import (DiffusionDPO, DiffusionDPOConfig, ObjectiveDataError, PreferenceTerms, SmPO,
                                  SmPOConfig, build_objective)
from diffalign.objectives.smpo import PICKSCORE_SCALE


def t64(rows):
    return torch.tensor(rows, dtype=torch.float64)


def softplus(z):
    return math.log1p(math.exp(z))


def logit(p):
    return math.log(p / (1 - p))


def random_pairs(seed, b=5):
    gen = torch.Generator().manual_seed(seed)
    err = 0.1 + 1e-3 * torch.randn(b, 2, generator=gen, dtype=torch.float64)
    ref = 0.1 + 1e-3 * torch.randn(b, 2, generator=gen, dtype=torch.float64)
    scores = 21 + torch.randn(b, 2, generator=gen, dtype=torch.float64)
    return err, ref, scores


def test_declarations_and_defaults():
    cfg = SmPO().config
    assert cfg.beta == 2000.0 and cfg.gamma == 10.0 and cfg.score_scale == 16.6581
    assert PICKSCORE_SCALE == pytest.approx(16.6581, rel=1e-12)  # 100 · (0.282016 − 0.115435)
    assert SmPO.name == "smpo" and SmPO.step == "inversion"
    assert SmPO.needs_reference and SmPO.needs_scores
    assert SmPO.min_group_size == SmPO.max_group_size == 2


def test_hand_value_two_pairs():
    """β = 100, γ = 10, score_scale = 2. Both pairs: err 0.10 / 0.12, ref 0.11 / 0.11 ⇒ margin_dpo = 1.
    Pair 1: scores gap 2·ln 3 ⇒ p = σ(ln 3) = 3/4 ⇒ γ(2p − 1) = 5 ⇒ margin 5, loss ln(1 + e^−5) = 0.006715.
    Pair 2: gap −2·ln 3 ⇒ p = 1/4 ⇒ γ(2p − 1) = −5 ⇒ margin −5, loss ln(1 + e^5) = 5.006715.
    mean = 2.506715; implicit_acc = 1/2; margin mean = 0."""
    gap = 2 * math.log(3)
    out = SmPO(SmPOConfig(beta=100, gamma=10, score_scale=2)).loss(PreferenceTerms(
        policy_err=t64([[0.10, 0.12], [0.10, 0.12]]), ref_err=t64([[0.11, 0.11], [0.11, 0.11]]),
        scores=t64([[20 + gap, 20], [20, 20 + gap]])))
    assert out.loss.item() == pytest.approx((softplus(-5) + softplus(5)) / 2, rel=1e-9)
    assert out.loss.item() == pytest.approx(2.506715, abs=1e-6)
    assert out.metrics["implicit_acc"].item() == 0.5
    assert out.metrics["margin"].item() == pytest.approx(0.0, abs=1e-9)
    assert set(out.metrics) == {"loss", "implicit_acc", "margin", "err_w", "err_l", "ref_gap"}


def test_hand_value_defaults():
    """β = 2000, γ = 10, score_scale = 16.6581. err 0.1000 / 0.1001, ref 0.1 / 0.1 ⇒ margin_dpo = 1000 · 0.0001
    = 0.1. PickScores 22 / 20: p = σ(2/16.6581) = σ(0.120062) = 0.529979, γ(2p − 1) = 0.599588,
    margin = 0.0599588, loss = ln(1 + e^−0.0599588) = 0.663617."""
    out = SmPO().loss(PreferenceTerms(policy_err=t64([[0.1000, 0.1001]]), ref_err=t64([[0.1, 0.1]]),
                                      scores=t64([[22.0, 20.0]])))
    p = 1 / (1 + math.exp(-2 / 16.6581))
    assert p == pytest.approx(0.529979, abs=1e-6)
    assert out.metrics["margin"].item() == pytest.approx(10 * (2 * p - 1) * 0.1, rel=1e-9)
    assert out.loss.item() == pytest.approx(softplus(-10 * (2 * p - 1) * 0.1), rel=1e-9)
    assert out.loss.item() == pytest.approx(0.663617, abs=1e-6)


@pytest.mark.parametrize("gamma", [10.0, 3.0])
def test_equals_diffusion_dpo_when_the_multiplier_is_one(gamma):
    """γ(2p − 1) = 1 ⇔ p = (1/γ + 1)/2 ⇔ score gap = score_scale · logit((1/γ + 1)/2)
    (γ = 10: 16.6581 · logit(0.55) = 16.6581 · 0.200671 = 3.342793)."""
    err, ref, _ = random_pairs(0)
    err.requires_grad_()
    gap = 16.6581 * logit((1 / gamma + 1) / 2)
    scores = t64([[21.0 + gap, 21.0]] * 5)
    a = SmPO(SmPOConfig(beta=3000, gamma=gamma)).loss(PreferenceTerms(policy_err=err, ref_err=ref, scores=scores))
    (grad_a,) = torch.autograd.grad(a.loss, err)
    b = DiffusionDPO(DiffusionDPOConfig(beta=3000)).loss(PreferenceTerms(policy_err=err, ref_err=ref))
    (grad_b,) = torch.autograd.grad(b.loss, err)
    assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-12)
    assert torch.allclose(grad_a, grad_b, rtol=1e-10, atol=0)
    # a "hard" label is not Diffusion-DPO: a full-spread gap multiplies the margin by γ·tanh(½) ≈ 4.62
    hard = SmPO(SmPOConfig(beta=3000, gamma=gamma)).loss(PreferenceTerms(
        policy_err=err, ref_err=ref, scores=t64([[16.6581, 0.0]] * 5)))
    assert hard.metrics["margin"].item() == pytest.approx(gamma * math.tanh(0.5) * b.metrics["margin"].item(),
                                                          rel=1e-9)


def test_equal_scores_give_ln2_and_exactly_zero_gradient():
    err, ref, _ = random_pairs(1)
    err.requires_grad_()
    tied = torch.full((5, 2), 21.3, dtype=torch.float64)
    out = SmPO().loss(PreferenceTerms(policy_err=err, ref_err=ref, scores=tied))
    assert out.loss.item() == math.log(2)
    out.loss.backward()
    assert torch.equal(err.grad, torch.zeros_like(err))


def test_swapping_winner_and_loser_with_their_scores_leaves_the_loss_unchanged():
    """−log σ(γ(2p − 1)·m) with (w, l, p) → (l, w, 1 − p): m → −m and 2p − 1 → −(2p − 1)."""
    err, ref, scores = random_pairs(2)
    err.requires_grad_()
    obj = SmPO()
    a = obj.loss(PreferenceTerms(policy_err=err, ref_err=ref, scores=scores))
    (grad_a,) = torch.autograd.grad(a.loss, err)
    b = obj.loss(PreferenceTerms(policy_err=err.flip(1), ref_err=ref.flip(1), scores=scores.flip(1)))
    (grad_b,) = torch.autograd.grad(b.loss, err)
    assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-12)
    assert a.metrics["margin"].item() == pytest.approx(b.metrics["margin"].item(), rel=1e-12)
    assert torch.allclose(grad_a, grad_b, rtol=1e-12, atol=0)
    # only swapping the images (scores kept) is a different loss
    c = obj.loss(PreferenceTerms(policy_err=err.flip(1), ref_err=ref.flip(1), scores=scores))
    assert c.loss.item() != pytest.approx(a.loss.item(), rel=1e-6)


def test_missing_scores_name_the_fix():
    err, ref, _ = random_pairs(3)
    with pytest.raises(ObjectiveDataError, match="smpo needs a reward score.*diffalign score"):
        SmPO().loss(PreferenceTerms(policy_err=err, ref_err=ref))
    with pytest.raises(ObjectiveDataError, match="smpo needs a reward score"):
        SmPO.check_data(group_size=2, has_captions=False, has_ranks=True, has_scores=False)
    SmPO.check_data(group_size=2, has_captions=False, has_ranks=True, has_scores=True)


def test_rejects_groups_a_missing_reference_and_misshaped_scores():
    with pytest.raises(ObjectiveDataError, match="smpo needs K = 2"):
        SmPO().loss(PreferenceTerms(policy_err=torch.zeros(2, 3), ref_err=torch.zeros(2, 3), scores=torch.zeros(2, 3)))
    with pytest.raises(ValueError, match="ref_err"):
        SmPO().loss(PreferenceTerms(policy_err=torch.zeros(2, 2), scores=torch.zeros(2, 2)))
    with pytest.raises(ValueError, match="scores has shape"):
        SmPO().loss(PreferenceTerms(policy_err=torch.zeros(2, 2), ref_err=torch.zeros(2, 2), scores=torch.zeros(3, 2)))


def test_scores_carry_no_gradient_and_float32_scores_work():
    err, ref, scores = random_pairs(4)
    err.requires_grad_()
    scores = scores.float().requires_grad_()
    out = SmPO().loss(PreferenceTerms(policy_err=err, ref_err=ref, scores=scores))
    assert out.loss.dtype == torch.float64
    out.loss.backward()
    assert scores.grad is None and err.grad is not None


@pytest.mark.parametrize("bad", [{"beta": 0.0}, {"beta": -1.0}, {"gamma": 0.0}, {"gamma": -10.0},
                                 {"score_scale": 0.0}, {"score_scale": -1.0}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SmPOConfig(**bad)
    with pytest.raises(ValueError, match=next(iter(bad))):
        build_objective({"name": "smpo", **bad})


def _mse(a, b):
    return ((a - b) ** 2).mean((1, 2, 3))


def test_v_and_flow_errors_rescale_the_eps_error():
    """v-prediction: ‖v̂ − v‖² = ‖ε̂ − ε‖²/ā_t; rectified flow: ‖v̂ − v‖² = ‖ε̂ − ε‖²/(1 − σ)²
    (derivation in diffalign.objectives.inpo), so for a pair sharing t the factor multiplies β."""
    gen = torch.Generator().manual_seed(5)
    x0, eps, eps_hat = (torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    alpha_bar, sigma = 0.81, 0.25
    a, s = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
    x_t = a * x0 + s * eps
    v_hat = a * eps_hat - s * (x_t - s * eps_hat) / a
    assert torch.allclose(_mse(v_hat, a * eps - s * x0), _mse(eps_hat, eps) / alpha_bar, rtol=1e-12)
    x_s = (1 - sigma) * x0 + sigma * eps
    u_hat = eps_hat - (x_s - sigma * eps_hat) / (1 - sigma)
    assert torch.allclose(_mse(u_hat, eps - x0), _mse(eps_hat, eps) / (1 - sigma) ** 2, rtol=1e-12)
    # the factor passes through SmPO as a factor on β
    err_eps, err_v = _mse(eps_hat, eps), _mse(v_hat, a * eps - s * x0)
    ref_eps = 0.95 * err_eps.flip(0)
    scores = t64([[22.0, 21.0]])
    on_v = SmPO().loss(PreferenceTerms(policy_err=err_v[None], ref_err=ref_eps[None] / alpha_bar, scores=scores))
    on_eps = SmPO(SmPOConfig(beta=2000 / alpha_bar)).loss(PreferenceTerms(policy_err=err_eps[None],
                                                                          ref_err=ref_eps[None], scores=scores))
    assert on_v.loss.item() == pytest.approx(on_eps.loss.item(), rel=1e-10)
