"""Ensembles: z-normalisation with given or calibrated statistics, weights, gradients."""

import statistics

import pytest
import torch
from reward_images import as_tensor, smooth_images

from diffalign.rewards import Ensemble, RewardModel
from diffalign.rewards.preprocess import ImageTransform


class _Brightness(RewardModel):
    """A stand-in reward: ``offset + gain · mean pixel value`` of the [0, 1] image (differentiable)."""

    uses_prompts = False

    def __init__(self, name: str, offset: float, gain: float, channel: int | None = None):
        super().__init__()
        self.name, self.offset, self.gain, self.channel = name, offset, gain, channel
        self.weight = torch.nn.Parameter(torch.ones(()), requires_grad=False)  # gives the model a device
        self.transform = _Identity()

    def score_pixels(self, pixels, prompts):
        values = pixels if self.channel is None else pixels[:, self.channel]
        return self.offset + self.gain * values.flatten(1).mean(1)


class _Identity(ImageTransform):
    def __call__(self, images):
        return images if isinstance(images, torch.Tensor) else as_tensor(images)


def _pixels_with_means(means):
    return torch.tensor(means, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).clone()


def test_given_statistics_hand_computed():
    members = [_Brightness("a", offset=20.0, gain=4.0), _Brightness("b", offset=0.0, gain=1.0)]
    ensemble = Ensemble(members, weights=[3.0, 1.0], stats={"a": {"mean": 22.0, "std": 1.0}, "b": {"mean": 0.0, "std": 0.5}})
    pixels = _pixels_with_means([0.25, 0.75])  # a: 21, 23 -> z = -1, 1;  b: 0.25, 0.75 -> z = 0.5, 1.5
    # (3 · (-1) + 1 · 0.5) / 4 = -0.625;  (3 · 1 + 1 · 1.5) / 4 = 1.125
    assert ensemble.score(pixels).tolist() == pytest.approx([-0.625, 1.125])
    assert ensemble.label == "ensemble(a:3,b:1)"


def test_calibration_gives_each_member_zero_mean_and_unit_std_on_the_reference_set():
    members = [_Brightness("a", offset=20.0, gain=4.0), _Brightness("b", offset=-3.0, gain=0.5, channel=0)]
    ensemble = Ensemble(members)
    reference = as_tensor(smooth_images(7, 16, 16))
    stats = ensemble.calibrate(reference, batch_size=3)  # batches of 3, 3, 1
    raw = {label: s.tolist() for label, s in ensemble.member_scores(reference).items()}
    for label in ("a", "b"):
        assert stats[label]["mean"] == pytest.approx(statistics.fmean(raw[label]), rel=1e-6)
        assert stats[label]["std"] == pytest.approx(statistics.pstdev(raw[label]), rel=1e-5)
        z = [(v - stats[label]["mean"]) / stats[label]["std"] for v in raw[label]]
        assert statistics.fmean(z) == pytest.approx(0.0, abs=1e-5) and statistics.pstdev(z) == pytest.approx(1.0, rel=1e-5)
    z_a, z_b = ([(v - stats[label]["mean"]) / stats[label]["std"] for v in raw[label]] for label in ("a", "b"))
    expected = [(za + zb) / 2 for za, zb in zip(z_a, z_b)]
    assert ensemble.score(reference).tolist() == pytest.approx(expected, abs=1e-5)


def test_scaling_a_member_does_not_change_the_ensemble():
    reference = as_tensor(smooth_images(5, 8, 8))
    small = Ensemble([_Brightness("a", 0.0, 1.0), _Brightness("b", 0.0, 1.0, channel=1)])
    large = Ensemble([_Brightness("a", 50.0, 100.0), _Brightness("b", 0.0, 1.0, channel=1)])
    small.calibrate(reference)
    large.calibrate(reference)
    assert torch.allclose(small.score(reference), large.score(reference), atol=1e-4)


def test_gradients_flow_through_the_ensemble():
    ensemble = Ensemble([_Brightness("a", 0.0, 2.0)], stats={"a": {"mean": 0.0, "std": 4.0}})
    pixels = torch.rand(2, 3, 4, 4, requires_grad=True)
    ensemble.score(pixels).sum().backward()
    # d/dx of (2 · mean(x)) / 4 = 0.5 / 48 per pixel
    assert torch.allclose(pixels.grad, torch.full_like(pixels, 0.5 / 48))


def test_group_probs_sum_to_one():
    ensemble = Ensemble([_Brightness("a", 0.0, 1.0)], stats={"a": {"mean": 0.0, "std": 0.1}})
    probs = ensemble.group_probs(_pixels_with_means([0.1, 0.2, 0.3]))
    assert probs.sum().item() == pytest.approx(1.0) and probs.argmax().item() == 2


def test_mistakes_are_refused():
    a = _Brightness("a", 0.0, 1.0)
    with pytest.raises(ValueError, match="distinct"):
        Ensemble([a, _Brightness("a", 1.0, 1.0)])
    with pytest.raises(ValueError, match="positive weight"):
        Ensemble([a], weights=[0.0])
    with pytest.raises(ValueError, match="calibrate"):
        Ensemble([a]).score(torch.rand(2, 3, 4, 4))
    with pytest.raises(ValueError, match="same score"):
        Ensemble([_Brightness("flat", 1.0, 0.0)]).calibrate(torch.rand(3, 3, 4, 4))


def test_an_ensemble_of_real_models(tiny_rewards, images):
    ensemble = Ensemble([tiny_rewards["pickscore"], tiny_rewards["hpsv2.1"]], weights=[1.0, 2.0])
    ensemble.calibrate(images, "a red circle")
    scores = ensemble.score(images, "a red circle")
    assert scores.shape == (4,) and abs(scores.mean().item()) < 1e-4  # both members average 0 on their reference set
    assert ensemble.label == "ensemble(pickscore:1,hpsv2.1:2)"


def test_load_ensemble_by_names(tiny_clip_dir):
    from diffalign.rewards import load_ensemble

    ensemble = load_ensemble({"pickscore": 1.0, "clip_score": 0.5}, stats={"pickscore": {"mean": 8.0, "std": 2.0}},
                             paths={"pickscore": tiny_clip_dir, "clip_score": tiny_clip_dir})
    assert ensemble.labels == ["pickscore", f"clip_score[{tiny_clip_dir}]"] and ensemble.weights == [1.0, 0.5]
    assert ensemble.stats == {"pickscore": {"mean": 8.0, "std": 2.0}}
