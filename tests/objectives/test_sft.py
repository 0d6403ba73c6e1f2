"""SFT on the preferred image: hand values, gradient, any K ≥ 1 (K = 1: SFT on experts)."""

import pytest
import torch

from diffalign.objectives import SFT, ObjectiveDataError, PreferenceTerms


def test_declarations():
    assert not SFT.needs_reference and SFT.min_group_size == 1 and SFT.max_group_size is None


def test_hand_value_pairs():
    """err [[0.1, 0.3], [0.2, 0.5]]: loss = (0.1 + 0.2)/2 = 0.15; err_w = 0.15; err_l = (0.3 + 0.5)/2 = 0.4."""
    out = SFT().loss(PreferenceTerms(policy_err=torch.tensor([[0.1, 0.3], [0.2, 0.5]], dtype=torch.float64)))
    assert out.loss.item() == pytest.approx(0.15, rel=1e-12)
    assert out.metrics["err_w"].item() == pytest.approx(0.15)
    assert out.metrics["err_l"].item() == pytest.approx(0.4)
    assert set(out.metrics) == {"loss", "err_w", "err_l"}


def test_hand_value_group_of_four_and_gradient():
    """err [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]]: loss = (0.1 + 0.5)/2 = 0.3;
    err_l = mean(0.2, 0.3, 0.4, 0.6, 0.7, 0.8) = 0.5; d loss / d err = 1/B = 0.5 on column 0, 0 elsewhere."""
    err = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]], dtype=torch.float64, requires_grad=True)
    out = SFT().loss(PreferenceTerms(policy_err=err))
    assert out.loss.item() == pytest.approx(0.3, rel=1e-12)
    assert out.metrics["err_l"].item() == pytest.approx(0.5, rel=1e-12)
    out.loss.backward()
    assert err.grad.tolist() == [[0.5, 0, 0, 0], [0.5, 0, 0, 0]]


def test_reference_is_ignored():
    err = torch.rand(3, 2)
    assert SFT().loss(PreferenceTerms(policy_err=err, ref_err=torch.rand(3, 2))).loss.item() == err[:, 0].mean().item()


def test_group_size_checks():
    SFT.check_data(group_size=7, has_captions=False, has_ranks=False)
    SFT.check_data(group_size=1, has_captions=False, has_ranks=False)  # an expert dataset
    with pytest.raises(ObjectiveDataError, match="sft needs K ≥ 1"):
        SFT.check_data(group_size=0, has_captions=False, has_ranks=False)


def test_one_expert_image_per_prompt():
    """err [[0.2], [0.4]]: loss = 0.3 and no err_l (there is no other image)."""
    out = SFT().loss(PreferenceTerms(policy_err=torch.tensor([[0.2], [0.4]], dtype=torch.float64)))
    assert out.loss.item() == pytest.approx(0.3, rel=1e-12)
    assert set(out.metrics) == {"loss", "err_w"}
