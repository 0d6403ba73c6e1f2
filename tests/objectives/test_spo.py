"""SPO's loss on hand-computed values: the step log-ratio from the step log-probabilities, the clip, β."""

import math

import pytest
import torch

from diffalign.objectives import SPO, PreferenceTerms, build_objective
from diffalign.objectives.base import ObjectiveDataError


def _terms(policy, ref, weights=None):
    """Terms from step log-probabilities ``[N, 2]`` of policy and reference."""
    return PreferenceTerms(policy_logp=torch.tensor(policy, dtype=torch.float64, requires_grad=True),
                           ref_logp=torch.tensor(ref, dtype=torch.float64), weights=weights)


def test_loss_by_hand_inside_the_clip():
    # r = policy_logp − ref_logp: r_w = −0.48 + 0.50 = 0.02, r_l = −0.51 + 0.50 = −0.01; β·(r_w − r_l) = 0.3
    out = SPO().loss(_terms([[-0.48, -0.51]], [[-0.50, -0.50]]))
    assert out.loss.item() == pytest.approx(math.log(1 + math.exp(-0.3)), rel=1e-9)
    assert out.metrics["margin"].item() == pytest.approx(0.3, rel=1e-9)
    assert out.metrics["implicit_acc"].item() == 1.0


def test_the_ratio_clip_binds_and_stops_the_gradient():
    # r_w = 0.5 is clamped to log 1.1, r_l = −0.5 to log 0.9: margin = 10·(log 1.1 − log 0.9)
    terms = _terms([[0.0, -1.0]], [[-0.5, -0.5]])
    out = SPO().loss(terms)
    margin = 10 * (math.log(1.1) - math.log(0.9))
    assert out.loss.item() == pytest.approx(math.log(1 + math.exp(-margin)), rel=1e-9)
    out.loss.backward()
    assert terms.policy_logp.grad.abs().max() == 0  # a hard clamp, as the official code
    unclipped = build_objective({"name": "spo", "clip": 0.0}).loss(_terms([[0.0, -1.0]], [[-0.5, -0.5]]))
    assert unclipped.loss.item() == pytest.approx(math.log(1 + math.exp(-10.0)), rel=1e-9)


def test_zero_weights_give_zero_loss_with_a_graph():
    terms = _terms([[-0.48, -0.51]], [[-0.50, -0.50]], weights=torch.zeros(1))
    out = SPO().loss(terms)
    assert out.loss.item() == 0 and out.loss.requires_grad


def test_the_loss_falls_as_the_winner_becomes_likelier():
    losses = [SPO().loss(_terms([[w, -0.5]], [[-0.5, -0.5]])).loss.item() for w in (-0.52, -0.5, -0.48, -0.46)]
    assert losses == sorted(losses, reverse=True) and len(set(losses)) == 4


def test_defaults_are_the_official_sd15_launcher_and_the_gap_is_two_artanh():
    from diffalign.step_settings import SPORollout

    config, rollout = SPO.Config(), SPORollout()
    assert (config.beta, config.clip, rollout.candidates, rollout.threshold, rollout.steps, rollout.eta,
            rollout.guidance, rollout.branch_from) == (10.0, 0.1, 4, 0.3, 20, 1.0, 5.0, 4)
    # softmax([a, b])_0 − softmax([a, b])_1 = tanh((a − b)/2) > 0.3  ⇔  a − b > 2·artanh(0.3) = 0.6190
    assert rollout.score_gap == pytest.approx(0.61904, abs=1e-5)


def test_spo_takes_prompts_of_any_group_size_and_refuses_bad_options():
    for k in (1, 2, 5):
        SPO.check_data(group_size=k, has_captions=False, has_ranks=False)
    from diffalign.step_settings import SPORollout

    with pytest.raises(ValueError, match="eta"):
        SPORollout(eta=0.0)
    with pytest.raises(ValueError, match="branch_from"):
        SPORollout(branch_from=20)
    with pytest.raises(ObjectiveDataError):
        SPO().loss(PreferenceTerms(policy_logp=torch.zeros(2, 3), ref_logp=torch.zeros(2, 3)))
