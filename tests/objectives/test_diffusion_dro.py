"""Diffusion-DRO's thresholded ranking loss on hand-computed values."""

import pytest
import torch

from diffalign.objectives import DiffusionDRO, PreferenceTerms, build_objective


def _terms(policy, ref):
    return PreferenceTerms(policy_err=torch.tensor(policy, dtype=torch.float64, requires_grad=True),
                           ref_err=torch.tensor(ref, dtype=torch.float64))


def test_loss_by_hand():
    # group 0: d_expert = 0.30 − 0.32 = −0.02, d_policy = 0.10 − 0.05 = 0.05: max(−0.07 + 0.001, 0) = 0
    # group 1: d_expert = 0.40 − 0.38 = 0.02, d_policy = 0.01 − 0.02 = −0.01: max(0.03 + 0.001, 0) = 0.031
    terms = _terms([[0.30, 0.10], [0.40, 0.01]], [[0.32, 0.05], [0.38, 0.02]])
    out = DiffusionDRO().loss(terms)
    assert out.loss.item() == pytest.approx(0.031 / 2, rel=1e-9)
    out.loss.backward()
    # Only group 1 is past the margin: d/d err_φ(expert) = +1/2, d/d err_φ(rollout) = −1/2.
    torch.testing.assert_close(terms.policy_err.grad, torch.tensor([[0.0, 0.0], [0.5, -0.5]], dtype=torch.float64))
    assert out.metrics["implicit_acc"].item() == 0.5  # group 0's ranking holds


def test_the_margin_is_the_paper_value_and_configurable():
    terms = _terms([[0.1, 0.1]], [[0.1, 0.1]])
    assert DiffusionDRO().loss(terms).loss.item() == pytest.approx(0.001)
    assert build_objective({"name": "diffusion_dro", "margin": 0.0}).loss(terms).loss.item() == 0.0
    from diffalign.step_settings import DRORollout

    assert DRORollout().refresh_every == 1 and DRORollout().steps == 20 and DRORollout().guidance == 1.0


def test_it_takes_one_expert_image_per_prompt_only():
    DiffusionDRO.check_data(group_size=1, has_captions=False, has_ranks=False)
    with pytest.raises(ValueError, match="diffusion_dro"):
        DiffusionDRO.check_data(group_size=2, has_captions=False, has_ranks=False)
