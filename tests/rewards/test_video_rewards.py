"""Video rewards: frame-averaged image rewards, CLIP temporal consistency, the video ensemble.

Expectations are computed by hand from stub rewards whose score is a known function of a frame.
"""

import math

import pytest
import torch
from reward_images import as_tensor

from diffalign.rewards import RewardModel, load_reward
from diffalign.rewards.base import ScoreInputError
from diffalign.rewards.preprocess import ImageTransform
from diffalign.rewards.video import (
    VIDEO_REWARDS, FrameAveraged, TemporalConsistency, VideoEnsemble, frame_indices, parse_frames, scores_videos,
)


class _Identity(ImageTransform):
    """No resize, no normalisation: the stubs see the [0, 1] pixels they were given."""

    def __call__(self, images):
        return images if isinstance(images, torch.Tensor) else as_tensor(images)


class _Brightness(RewardModel):
    """A stand-in image reward, ``offset + gain · mean pixel value``; records every call."""

    def __init__(self, name="bright", offset=0.0, gain=1.0, uses_prompts=False):
        super().__init__()
        self.name, self.offset, self.gain, self.uses_prompts = name, offset, gain, uses_prompts
        self.weight = torch.nn.Parameter(torch.ones(()), requires_grad=False)  # gives the model a device
        self.transform = _Identity()
        self.calls = []  # (frames, prompts) per call of score_pixels

    def score_pixels(self, pixels, prompts):
        self.calls.append((len(pixels), list(prompts)))
        return self.offset + self.gain * pixels.flatten(1).mean(1)


def _video(brightness, size=4):
    """``[F, 3, size, size]``: frame f is constant at ``brightness[f]``."""
    return torch.tensor(brightness, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, size, size).clone()


# v1 has 5 frames, v2 has 3; every:2 keeps frames 0, 2, 4 of v1 and 0, 2 of v2.
V1, V2 = [0.1, 0.2, 0.6, 0.3, 0.8], [0.9, 0.6, 0.0]
EXPECTED = {
    "all": [(0.1 + 0.2 + 0.6 + 0.3 + 0.8) / 5, (0.9 + 0.6 + 0.0) / 3],
    "first": [0.1, 0.9],
    "every:2": [(0.1 + 0.6 + 0.8) / 3, (0.9 + 0.0) / 2],
}


@pytest.mark.parametrize("frames", ["all", "first", "every:2", 2])
def test_frame_averaged_is_the_hand_mean_over_the_chosen_frames(frames):
    stub = _Brightness()
    reward = FrameAveraged(stub, frames)
    scores = reward.score([_video(V1), _video(V2)])
    spelt = "every:2" if frames == 2 else frames
    assert scores.dtype == torch.float32 and scores.tolist() == pytest.approx(EXPECTED[spelt], abs=1e-6)
    assert reward.label == f"bright@frames:{spelt}"
    assert len(stub.calls) == 1  # all chosen frames of the batch in one call of the image reward
    assert stub.calls[0][0] == {"all": 8, "first": 2, "every:2": 5}[spelt]


def test_each_frame_is_scored_against_its_videos_prompt():
    stub = _Brightness(uses_prompts=True)
    FrameAveraged(stub, "every:2").score([_video(V1), _video(V2)], ["a cat", "a dog"])
    assert stub.calls == [(5, ["a cat"] * 3 + ["a dog"] * 2)]
    with pytest.raises(ScoreInputError, match="2 videos but 3 prompts"):
        FrameAveraged(stub).score([_video(V1), _video(V2)], ["a", "b", "c"])
    with pytest.raises(ScoreInputError, match="give prompts"):
        FrameAveraged(stub).score([_video(V1)])


def test_uint8_pil_and_mixed_size_videos_give_the_same_scores():
    stub = _Brightness()
    reward = FrameAveraged(stub, "all")
    v1, v2 = _video(V1), _video(V2, size=6)
    floats = reward.score([v1, v2])
    assert len(stub.calls) == 2  # two frame sizes cannot be stacked: one call per size
    as_uint8 = [(v * 255).round().to(torch.uint8) for v in (v1, v2)]
    assert torch.allclose(reward.score(as_uint8), floats, atol=1 / 255)
    from PIL import Image

    # (The stub stacks the PIL frames it is given, so they share one size here.)
    pil = [[Image.fromarray(frame.permute(1, 2, 0).numpy()) for frame in video] for video in (as_uint8[0], as_uint8[0])]
    assert torch.allclose(reward.score(pil), floats[[0, 0]], atol=1 / 255)
    assert scores_videos(reward) and not scores_videos(stub)


def test_gradients_reach_only_the_chosen_frames_of_a_batch_tensor():
    videos = torch.rand(2, 4, 3, 4, 4, requires_grad=True)
    FrameAveraged(_Brightness(gain=2.0), "every:2").score(videos).sum().backward()
    # d/dx of 2 · mean over frames 0, 2 of the frame mean = 2 / (2 frames · 48 values) on those frames
    expected = torch.zeros_like(videos)
    expected[:, [0, 2]] = 2 / (2 * 48)
    assert torch.allclose(videos.grad, expected)


def test_group_probs_over_videos():
    reward = FrameAveraged(_Brightness(gain=10.0), "all")
    probs = reward.group_probs([_video([0.1, 0.3]), _video([0.8, 0.6]), _video([0.2])])
    # logits 2, 7, 2 (10 · mean brightness)
    e = [math.exp(2), math.exp(7), math.exp(2)]
    assert probs.tolist() == pytest.approx([v / sum(e) for v in e], rel=1e-5)


def test_a_real_image_reward_averaged_over_frames():
    from diffalign.rewards.tiny import tiny_reward

    pickscore = tiny_reward("pickscore")
    video = torch.rand(3, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    averaged = FrameAveraged(pickscore).score(video[None], "a red circle")
    assert averaged.item() == pytest.approx(pickscore.score(video, "a red circle").mean().item(), abs=1e-5)


def test_mistakes_are_refused_naming_the_fix():
    reward = FrameAveraged(_Brightness())
    with pytest.raises(ScoreInputError, match=r"\[video\]"):
        reward.score(_video(V1))  # one video, not a batch
    with pytest.raises(ScoreInputError, match="transpose"):
        reward.score([_video(V1).transpose(0, 1)])  # [3, F, H, W], the loader's layout
    with pytest.raises(ScoreInputError, match="no frames"):
        reward.score([[]])
    for bad in ("some", "every:0", "every:x", 0, True):
        with pytest.raises(ScoreInputError, match="every"):
            parse_frames(bad)
    with pytest.raises(ScoreInputError, match="already scores videos"):
        FrameAveraged(reward)


def test_frame_indices():
    assert frame_indices(parse_frames("all"), 3) == [0, 1, 2]
    assert frame_indices(parse_frames("first"), 3) == [0]
    assert frame_indices(parse_frames("every:4"), 9) == [0, 4, 8]


# ----------------------------------------------------------------------------- temporal consistency
class _AngleConsistency(TemporalConsistency):
    """Temporal consistency whose "CLIP" embeds a frame of brightness b as (cos θ, sin θ), θ = π b / 2."""

    def __init__(self):
        super().__init__(torch.nn.Linear(1, 1), _Identity(), backbone="angles")

    def image_features(self, pixels):
        angle = pixels.flatten(1).mean(1) * math.pi / 2
        return torch.stack([angle.cos(), angle.sin()], dim=-1)


def test_temporal_consistency_is_100_times_the_mean_cosine_of_consecutive_frames():
    reward = _AngleConsistency()
    scores = reward.score([_video([0.0, 0.2, 0.6]), _video([0.5] * 4), _video([0.3])])
    # consecutive angle steps of the first video: 0.1π and 0.2π
    hand = 100 * (math.cos(0.1 * math.pi) + math.cos(0.2 * math.pi)) / 2
    assert scores.tolist() == pytest.approx([hand, 100.0, 100.0], abs=1e-4)  # constant and one-frame videos: 100
    assert reward.label == "temporal_consistency[angles]" and not reward.uses_prompts


def test_temporal_consistency_of_a_tiny_clip(tiny_clip_dir):
    reward = load_reward("temporal_consistency", tiny_clip_dir)
    assert isinstance(reward, TemporalConsistency) and VIDEO_REWARDS["temporal_consistency"] is TemporalConsistency
    assert reward.label == f"temporal_consistency[{tiny_clip_dir}]"
    generator = torch.Generator().manual_seed(0)
    still = torch.rand(1, 3, 32, 32, generator=generator).expand(5, -1, -1, -1)
    changing = torch.rand(5, 3, 32, 32, generator=generator)
    scores = reward.score([still, changing])
    assert scores[0].item() == pytest.approx(100.0, abs=1e-3) and scores[1].item() < scores[0].item() - 1e-3
    # The batch tensor path gives the same numbers, and gradients reach every frame.
    videos = torch.stack([still, changing]).requires_grad_(True)
    tensor_scores = reward.score(videos)
    assert torch.allclose(tensor_scores, scores, atol=1e-4)
    tensor_scores[1].backward()
    assert videos.grad[1].abs().flatten(1).sum(1).min() > 0


# ----------------------------------------------------------------------------- ensemble
def test_video_ensemble_normalises_like_the_image_ensemble():
    a, b = _Brightness("a", offset=20.0, gain=4.0), _Brightness("b")
    stats = {"a@frames:all": {"mean": 22.0, "std": 1.0}, "b@frames:all": {"mean": 0.0, "std": 0.5}}
    ensemble = VideoEnsemble([a, b], weights=[3.0, 1.0], stats=stats)
    videos = [_video([0.0, 0.5]), _video([0.75])]  # means 0.25, 0.75 -> a: 21, 23 (z -1, 1); b: z 0.5, 1.5
    assert ensemble.score(videos).tolist() == pytest.approx([-0.625, 1.125])
    assert ensemble.label == "video_ensemble(a@frames:all:3,b@frames:all:1)" and scores_videos(ensemble)


def test_video_ensemble_calibrates_on_a_batch_tensor_with_a_video_member():
    ensemble = VideoEnsemble([_Brightness("a"), _AngleConsistency()], frames="first")
    videos = torch.rand(5, 3, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    stats = ensemble.calibrate(videos, batch_size=2)
    assert set(stats) == {"a@frames:first", "temporal_consistency[angles]"}
    first = videos[:, 0].flatten(1).mean(1).double()
    assert stats["a@frames:first"]["mean"] == pytest.approx(first.mean().item(), rel=1e-5)
    assert abs(ensemble.score(videos).mean().item()) < 1e-5  # each member averages 0 on its reference set
