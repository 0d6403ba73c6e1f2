"""DCPO: Diffusion-DPO's maths with per-image captions (the captions act in the trainer)."""

import math

import pytest
import torch

from diffalign.objectives import DCPO, DCPOConfig, DiffusionDPO, DiffusionDPOConfig, ObjectiveDataError, PreferenceTerms


def test_defaults_and_declarations():
    assert DCPO().config.beta == 500.0  # official src/run.sh
    assert DCPO.needs_captions and DCPO.needs_reference
    assert DCPO.min_group_size == DCPO.max_group_size == 2
    assert DCPO.name == "dcpo"


def test_hand_value_default_beta():
    """β = 500: err_w = 0.100, err_l = 0.104, ref 0.1 / 0.1: d_θ = −0.004, d_ref = 0,
    margin = −250 · (−0.004) = 1, loss = ln(1 + e^−1) = 0.313262."""
    out = DCPO().loss(PreferenceTerms(policy_err=torch.tensor([[0.100, 0.104]], dtype=torch.float64),
                                      ref_err=torch.tensor([[0.1, 0.1]], dtype=torch.float64)))
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-1)), rel=1e-9)


@pytest.mark.parametrize("beta", [500.0, 5000.0])
def test_same_inputs_same_beta_give_diffusion_dpo(beta):
    """With identical captions the trainer computes the same errors, so DCPO must equal Diffusion-DPO."""
    torch.manual_seed(0)
    err = (0.1 + 0.001 * torch.randn(6, 2)).requires_grad_()
    ref = 0.1 + 0.001 * torch.randn(6, 2)
    dcpo = DCPO(DCPOConfig(beta=beta)).loss(PreferenceTerms(policy_err=err, ref_err=ref))
    dpo = DiffusionDPO(DiffusionDPOConfig(beta=beta)).loss(PreferenceTerms(policy_err=err, ref_err=ref))
    assert dcpo.loss.item() == dpo.loss.item()
    assert dcpo.metrics.keys() == dpo.metrics.keys()
    (g1,) = torch.autograd.grad(dcpo.loss, err)
    (g2,) = torch.autograd.grad(dpo.loss, err)
    assert torch.equal(g1, g2)


def test_check_data_asks_for_captions():
    with pytest.raises(ObjectiveDataError, match="dcpo needs a caption per image"):
        DCPO.check_data(group_size=2, has_captions=False, has_ranks=False)
    DCPO.check_data(group_size=2, has_captions=True, has_ranks=False)
    with pytest.raises(ObjectiveDataError, match="dcpo needs K = 2"):
        DCPO.check_data(group_size=4, has_captions=True, has_ranks=True)
