"""RankDPO: hand-computed DCG weights, exact reduction to Diffusion-DPO at K = 2, ties, scores vs ranks."""

import math

import pytest
import torch

from diffalign.objectives import (DiffusionDPO, DiffusionDPOConfig, ObjectiveDataError, PreferenceTerms, RankDPO,
                                  RankDPOConfig)
from diffalign.objectives.rank_dpo import gains_and_positions, pair_weights

INV_D = [None, 1 / math.log(2), 1 / math.log(3), 1 / math.log(4), 1 / math.log(5)]  # 1/D(τ) = 1/ln(1 + τ)


def sp(z):
    """softplus(z) = ln(1 + e^z)."""
    return math.log1p(math.exp(z))


def t64(rows):
    return torch.tensor(rows, dtype=torch.float64)


def rank_loss(policy, ranks=None, scores=None, beta=200.0, ref=None, **cfg):
    policy = t64(policy)
    ref = torch.zeros_like(policy) if ref is None else t64(ref)
    terms = PreferenceTerms(policy_err=policy, ref_err=ref, ranks=None if ranks is None else torch.tensor(ranks),
                            scores=None if scores is None else t64(scores))
    return RankDPO(RankDPOConfig(beta=beta, **cfg)).loss(terms)


def test_declarations_and_defaults():
    assert RankDPO().config.beta == 5000.0
    assert RankDPO.needs_ranks and RankDPO.needs_reference
    assert RankDPO.min_group_size == 3 and RankDPO.max_group_size is None


def test_hand_weights_k3_from_column_order():
    """K = 3, no ranks: φ = (K − τ)/(K − 1) = [1, 0.5, 0]; G = 2^φ − 1 = [1, √2 − 1, 0]; τ = [1, 2, 3].
    Δ01 = (2 − √2)(1/ln2 − 1/ln3) = 0.585786 · 0.532456 = 0.311905
    Δ02 = 1 · (1/ln2 − 1/ln4)                       = 0.721348
    Δ12 = (√2 − 1)(1/ln3 − 1/ln4) = 0.414214 · 0.188892 = 0.078242; nothing below the diagonal."""
    phi, tau = gains_and_positions(None, None, 1, 3, dtype=torch.float64)
    assert phi.tolist() == [[1.0, 0.5, 0.0]] and tau.tolist() == [[1, 2, 3]]
    delta = pair_weights(phi, tau)[0]
    r2 = math.sqrt(2)
    expected = [[0, (2 - r2) * (INV_D[1] - INV_D[2]), INV_D[1] - INV_D[3]],
                [0, 0, (r2 - 1) * (INV_D[2] - INV_D[3])],
                [0, 0, 0]]
    assert delta.tolist() == [pytest.approx(row, rel=1e-12, abs=1e-15) for row in expected]
    assert delta[0, 1].item() == pytest.approx(0.311905, abs=1e-6)
    assert delta[1, 2].item() == pytest.approx(0.078242, abs=1e-6)


def test_hand_loss_k3():
    """ref = 0, policy err [0, 0.01, 0.03], β = 200 (β/2 = 100): margins −100 (s_a − s_b):
    (0,1) → 1, (0,2) → 3, (1,2) → 2. Weights w = Δ / ΣΔ with Δ from the test above
    (ΣΔ = 1.111495 ⇒ w = 0.280618, 0.648989, 0.070393).
    loss = w01 ln(1 + e^−1) + w02 ln(1 + e^−3) + w12 ln(1 + e^−2)."""
    r2 = math.sqrt(2)
    d01, d02, d12 = (2 - r2) * (INV_D[1] - INV_D[2]), INV_D[1] - INV_D[3], (r2 - 1) * (INV_D[2] - INV_D[3])
    total = d01 + d02 + d12
    assert total == pytest.approx(1.111495, abs=1e-6)
    expected = (d01 * sp(-1) + d02 * sp(-3) + d12 * sp(-2)) / total
    out = rank_loss([[0.0, 0.01, 0.03]])
    assert out.loss.item() == pytest.approx(expected, rel=1e-10)
    assert out.metrics["implicit_acc"].item() == 1.0
    assert out.metrics["margin"].item() == pytest.approx(2.0, rel=1e-10)  # (1 + 3 + 2) / 3
    assert out.metrics["err_w"].item() == 0.0 and out.metrics["err_l"].item() == pytest.approx(0.03)


def test_metrics_over_two_groups():
    """Group 2 has its errors reversed: margins −2, −3, −1. With ref = 0: implicit_acc = 3/6 and
    margin mean = (1 + 3 + 2 − 2 − 3 − 1)/6 = 0. err_w = mean(0, 0.03) = 0.015 (best = column 0),
    err_l = mean(0.03, 0) = 0.015 (worst = column 2); with ref [[0.1, 0.2, 0.3], 0]:
    ref_gap = mean(0.1 − 0.3, 0 − 0) = −0.1."""
    out = rank_loss([[0.0, 0.01, 0.03], [0.03, 0.01, 0.0]], ref=[[0.1, 0.2, 0.3], [0, 0, 0]])
    m = out.metrics
    assert m["err_w"].item() == pytest.approx(0.015) and m["err_l"].item() == pytest.approx(0.015)
    assert m["ref_gap"].item() == pytest.approx(-0.1)
    plain = rank_loss([[0.0, 0.01, 0.03], [0.03, 0.01, 0.0]])
    assert plain.metrics["implicit_acc"].item() == 0.5
    assert plain.metrics["margin"].item() == pytest.approx(0.0, abs=1e-10)


def test_ties_get_zero_weight():
    """ranks [0, 0, 2]: τ = [1, 1, 3], φ = [1, 1, 0]; Δ01 = 0, Δ02 = Δ12 = 1/ln2 − 1/ln4 ⇒ w = ½, ½.
    With policy [0, 0.01, 0.03], β = 200: loss = ½ ln(1 + e^−3) + ½ ln(1 + e^−2); only 2 weighted pairs."""
    phi, tau = gains_and_positions(torch.tensor([[0, 0, 2]]), None, 1, 3, dtype=torch.float64)
    assert tau.tolist() == [[1, 1, 3]] and phi.tolist() == [[1.0, 1.0, 0.0]]
    delta = pair_weights(phi, tau)
    assert delta[0, 0, 1].item() == 0.0 and delta[0, 1, 0].item() == 0.0
    out = rank_loss([[0.0, 0.01, 0.03]], ranks=[[0, 0, 2]])
    assert out.loss.item() == pytest.approx((sp(-3) + sp(-2)) / 2, rel=1e-10)
    assert out.metrics["margin"].item() == pytest.approx(2.5, rel=1e-10)  # (3 + 2) / 2


def test_dense_and_competition_tied_ranks_agree():
    a = rank_loss([[0.0, 0.01, 0.02, 0.05]], ranks=[[0, 1, 1, 2]])
    b = rank_loss([[0.0, 0.01, 0.02, 0.05]], ranks=[[0, 1, 1, 3]])
    assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-12)


def test_all_tied_groups_are_left_out_of_the_mean():
    """Group 2 is all tied: the loss is group 1's alone, not half of it."""
    alone = rank_loss([[0.0, 0.01, 0.03]], ranks=[[0, 1, 2]])
    both = rank_loss([[0.0, 0.01, 0.03], [0.5, 0.1, 0.9]], ranks=[[0, 1, 2], [1, 1, 1]])
    assert both.loss.item() == pytest.approx(alone.loss.item(), rel=1e-12)
    err = t64([[0.5, 0.1, 0.9]]).requires_grad_()
    none = RankDPO().loss(PreferenceTerms(policy_err=err, ref_err=torch.zeros(1, 3, dtype=torch.float64),
                                          scores=t64([[2.0, 2.0, 2.0]])))
    assert none.loss.item() == 0.0 and none.metrics["implicit_acc"].item() == 0.0
    none.loss.backward()
    assert err.grad.abs().sum().item() == 0.0


def test_scores_are_min_max_normalised():
    """scores [3, 2, 1] ⇒ φ = [1, 0.5, 0] (same as column order); scores [10, 9, 0] ⇒ φ = [1, 0.9, 0]:
    Δ01 = (2 − 2^0.9)(1/ln2 − 1/ln3), Δ02 = 1/ln2 − 1/ln4, Δ12 = (2^0.9 − 1)(1/ln3 − 1/ln4)."""
    policy = [[0.0, 0.01, 0.03]]
    assert rank_loss(policy, scores=[[3.0, 2.0, 1.0]]).loss.item() == pytest.approx(rank_loss(policy).loss.item(),
                                                                                    rel=1e-12)
    g9 = 2 ** 0.9
    d01, d02, d12 = (2 - g9) * (INV_D[1] - INV_D[2]), INV_D[1] - INV_D[3], (g9 - 1) * (INV_D[2] - INV_D[3])
    expected = (d01 * sp(-1) + d02 * sp(-3) + d12 * sp(-2)) / (d01 + d02 + d12)
    out = rank_loss(policy, scores=[[10.0, 9.0, 0.0]], ranks=[[2, 1, 0]])  # scores win over ranks
    assert out.loss.item() == pytest.approx(expected, rel=1e-10)


def test_raw_scores_as_phi():
    """minmax_scores=False: φ = scores = [0.8, 0.6, 0.2], G = 2^φ − 1."""
    gains = [2 ** p - 1 for p in (0.8, 0.6, 0.2)]
    d01 = (gains[0] - gains[1]) * (INV_D[1] - INV_D[2])
    d02 = (gains[0] - gains[2]) * (INV_D[1] - INV_D[3])
    d12 = (gains[1] - gains[2]) * (INV_D[2] - INV_D[3])
    expected = (d01 * sp(-1) + d02 * sp(-3) + d12 * sp(-2)) / (d01 + d02 + d12)
    out = rank_loss([[0.0, 0.01, 0.03]], scores=[[0.8, 0.6, 0.2]], minmax_scores=False)
    assert out.loss.item() == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        rank_loss([[0.0, 0.01, 0.03]], scores=[[8.0, 6.0, 2.0]], minmax_scores=False)


def test_column_order_does_not_matter_when_ranked():
    torch.manual_seed(0)
    policy, ref = 0.1 + 0.001 * torch.randn(2, 3, 4, dtype=torch.float64)
    scores = torch.randn(3, 4, dtype=torch.float64)
    perm = torch.tensor([2, 0, 3, 1])
    obj = RankDPO()
    a = obj.loss(PreferenceTerms(policy_err=policy, ref_err=ref, scores=scores))
    b = obj.loss(PreferenceTerms(policy_err=policy[:, perm], ref_err=ref[:, perm], scores=scores[:, perm]))
    assert b.loss.item() == pytest.approx(a.loss.item(), rel=1e-12)
    ranks = scores.argsort(1, descending=True).argsort(1)  # 0 = best
    c = obj.loss(PreferenceTerms(policy_err=policy[:, perm], ref_err=ref[:, perm], ranks=ranks[:, perm]))
    d = obj.loss(PreferenceTerms(policy_err=policy, ref_err=ref, ranks=ranks))
    assert c.loss.item() == pytest.approx(d.loss.item(), rel=1e-12)


@pytest.mark.parametrize("order", ["none", "ranks", "scores", "raw_scores"])
@pytest.mark.parametrize("beta", [5000.0, 200.0])
def test_k2_reduces_exactly_to_diffusion_dpo(order, beta):
    torch.manual_seed(3)
    policy = (0.1 + 0.001 * torch.randn(16, 2, dtype=torch.float64)).requires_grad_()
    ref = 0.1 + 0.001 * torch.randn(16, 2, dtype=torch.float64)
    extra = {"none": {}, "ranks": {"ranks": torch.tensor([[0, 1]]).expand(16, 2)},
             "scores": {"scores": torch.randn(16, 1, dtype=torch.float64) + t64([[1.5, 0.0]])},
             "raw_scores": {"scores": t64([[0.7, 0.3]]).expand(16, 2)}}[order]
    cfg = {"minmax_scores": order != "raw_scores"}
    rank = RankDPO(RankDPOConfig(beta=beta, **cfg)).loss(PreferenceTerms(policy_err=policy, ref_err=ref, **extra))
    dpo = DiffusionDPO(DiffusionDPOConfig(beta=beta)).loss(PreferenceTerms(policy_err=policy, ref_err=ref))
    assert rank.loss.item() == pytest.approx(dpo.loss.item(), rel=1e-6, abs=1e-12)
    for key in ("implicit_acc", "margin", "err_w", "err_l", "ref_gap"):
        assert rank.metrics[key].item() == pytest.approx(dpo.metrics[key].item(), rel=1e-6, abs=1e-12), key
    (g1,) = torch.autograd.grad(rank.loss, policy)
    (g2,) = torch.autograd.grad(dpo.loss, policy)
    assert torch.allclose(g1, g2, rtol=1e-6, atol=1e-12)


def test_k2_with_the_loser_first_is_dpo_on_swapped_columns():
    policy, ref = t64([[0.12, 0.10]]), t64([[0.11, 0.11]])
    rank = RankDPO(RankDPOConfig(beta=100.0)).loss(
        PreferenceTerms(policy_err=policy, ref_err=ref, ranks=torch.tensor([[1, 0]])))
    assert rank.loss.item() == pytest.approx(math.log1p(math.exp(-1)), rel=1e-9)  # margin 1, as in the DPO test


def test_check_data_refuses_pairs_and_unranked_data():
    with pytest.raises(ObjectiveDataError, match="rank_dpo needs K ≥ 3.*pairs"):
        RankDPO.check_data(group_size=2, has_captions=False, has_ranks=True)
    with pytest.raises(ObjectiveDataError, match="rank_dpo needs ranks or scores"):
        RankDPO.check_data(group_size=4, has_captions=False, has_ranks=False)
    RankDPO.check_data(group_size=4, has_captions=False, has_ranks=True)
