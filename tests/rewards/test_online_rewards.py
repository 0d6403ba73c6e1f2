"""Online-RL rewards (rewards/online.py): loading specs, batching, videos, the weighted total.

Members are stub plugins (online_stubs.py) whose scores are computed by hand, the tiny PickScore,
and the toy reward's plugin.
"""

import math

import pytest
import torch

from diffalign.errors import DiffalignError
from diffalign.rewards import load_reward
from diffalign.rewards.base import ScoreInputError
from diffalign.rewards.online import RewardSpec, RewardSpecError, check_reward_specs, load_online_rewards
from diffalign.rewards.tiny import save_tiny_reward


@pytest.fixture(scope="module")
def tiny_pickscore(tmp_path_factory):
    """The folder of a saved tiny PickScore (loads with no extra options)."""
    path, kwargs = save_tiny_reward("pickscore", tmp_path_factory.mktemp("pickscore"))
    assert kwargs == {}
    return str(path)


def two_images():
    """Image 0 is grey 0.5 everywhere; image 1 is pure red: ``[2, 3, 4, 4]``."""
    images = torch.zeros(2, 3, 4, 4)
    images[0] = 0.5
    images[1, 0] = 1.0
    return images


# ----------------------------------------------------------------------------- the weighted total
def test_raw_scores_and_their_weighted_sum_by_hand():
    rewards = load_online_rewards([{"name": "online_stubs:Brightness", "weight": 2.0},
                                   {"name": "online_stubs:RedMean", "weight": -0.5}], "cpu")
    assert rewards.labels == ["brightness", "online_stubs:RedMean"] and rewards.weights == [2.0, -0.5]
    scores = rewards(two_images(), ["a", "b"])
    # brightness: 0.5 and 1/3 (one channel of three at 1); red mean: 0.5 and 1
    torch.testing.assert_close(scores["brightness"], torch.tensor([0.5, 1 / 3]))
    torch.testing.assert_close(scores["online_stubs:RedMean"], torch.tensor([0.5, 1.0]))
    assert all(s.dtype == torch.float32 and s.device.type == "cpu" for s in scores.values())
    # 2 · 0.5 − 0.5 · 0.5 = 0.75;  2 · 1/3 − 0.5 · 1 = 1/6
    torch.testing.assert_close(rewards.total(scores), torch.tensor([0.75, 1 / 6]))


def test_total_needs_every_members_scores():
    rewards = load_online_rewards([RewardSpec("online_stubs:Brightness"), RewardSpec("online_stubs:RedMean")], "cpu")
    with pytest.raises(ScoreInputError, match="no scores for"):
        rewards.total({"brightness": torch.ones(2)})


def test_scores_are_taken_without_gradient():
    images = two_images().requires_grad_(True)
    scores = load_online_rewards([{"name": "online_stubs:Brightness"}], "cpu")(images, ["a", "b"])
    assert not scores["brightness"].requires_grad


# ----------------------------------------------------------------------------- batching
def test_five_images_in_batches_of_two_score_as_one_batch(tiny_pickscore):
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prompts = ["a red circle", "a cat", "a dog", "a blue square", "a photo"]
    metadata = [{"value": 10.0 * i} for i in range(5)]
    specs = [{"name": "online_stubs:Brightness"}, {"name": "online_stubs:MetadataValue"},
             {"name": "pickscore", "path": tiny_pickscore}]
    split = load_online_rewards([dict(s, batch_size=2) for s in specs], "cpu")
    whole = load_online_rewards([dict(s, batch_size=5) for s in specs], "cpu")
    a, b = split(images, prompts, metadata), whole(images, prompts, metadata)
    assert split.members[0].calls == [2, 2, 1] and whole.members[0].calls == [5]
    assert a["metadata_value"].tolist() == [0.0, 10.0, 20.0, 30.0, 40.0]  # each row's own record, in order
    for label in split.labels:
        torch.testing.assert_close(a[label], b[label])
    torch.testing.assert_close(a["brightness"], images.mean((1, 2, 3)))
    assert a["pickscore"].std() > 0  # the tiny model tells the images apart, so the comparison means something


def test_counts_of_images_prompts_and_metadata_must_agree():
    rewards = load_online_rewards([{"name": "online_stubs:Brightness"}], "cpu")
    with pytest.raises(ScoreInputError, match="2 samples, 1 prompts"):
        rewards(two_images(), ["a"])
    with pytest.raises(ScoreInputError, match=r"\[N, 3, H, W\]"):
        rewards(torch.rand(2, 3, 2, 4, 4), ["a", "b"])
    with pytest.raises(ScoreInputError, match="float tensor"):
        rewards(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), ["a", "b"])


def test_submit_scores_in_the_background():
    rewards = load_online_rewards([{"name": "online_stubs:Brightness"}], "cpu")
    future = rewards.submit(two_images(), ["a", "b"])
    torch.testing.assert_close(future.result(timeout=30)["brightness"], torch.tensor([0.5, 1 / 3]))
    rewards.close()


# ----------------------------------------------------------------------------- videos
def test_video_scores_average_the_chosen_frames_in_either_layout(tiny_pickscore):
    videos = torch.rand(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))  # [N, C, F, H, W]
    prompts = ["a cat", "a dog"]
    rewards = load_online_rewards([{"name": "pickscore", "path": tiny_pickscore, "frames": "every:2", "batch_size": 1}],
                                  "cpu", media="video")
    assert rewards.labels == ["pickscore@frames:every:2"]
    image_reward = load_reward("pickscore", tiny_pickscore)
    by_hand = torch.stack([image_reward.score(videos[n, :, [0, 2]].transpose(0, 1), [prompts[n]] * 2).mean()
                           for n in range(2)])
    channels_first = rewards(videos, prompts)["pickscore@frames:every:2"]
    frames_first = rewards(videos.transpose(1, 2).contiguous(), prompts)["pickscore@frames:every:2"]
    torch.testing.assert_close(channels_first, by_hand)
    torch.testing.assert_close(frames_first, by_hand)


def test_three_frame_videos_need_their_layout_named():
    rewards = load_online_rewards([{"name": "online_stubs:VideoLength"}], "cpu", media="video")
    videos = torch.rand(2, 3, 3, 4, 4)
    with pytest.raises(ScoreInputError, match="layout='NCFHW' or 'NFCHW'"):
        rewards(videos, ["a", "b"])
    assert rewards(videos, ["a", "b"], layout="NCFHW")["video_length"].tolist() == [3.0, 3.0]
    assert rewards(torch.rand(2, 5, 3, 4, 4), ["a", "b"])["video_length"].tolist() == [5.0, 5.0]
    with pytest.raises(ScoreInputError, match="not laid out as 'NCFHW'"):
        rewards(torch.rand(2, 5, 3, 4, 4), ["a", "b"], layout="NCFHW")


# ----------------------------------------------------------------------------- checks before loading
def one_problem(specs, media="image") -> str:
    problems = check_reward_specs(specs, media)
    assert len(problems) == 1, problems
    return problems[0]


def test_check_reward_specs_names_each_problem():
    assert check_reward_specs([{"name": "pickscore", "weight": 1.0}, {"name": "geneval", "weight": 0.5},
                               {"name": "diffalign.toy.reward:ToyReward", "frames": "every:2"}]) == []
    unknown = one_problem([{"name": "pikscore"}])
    assert unknown.startswith("rewards[0]: unknown reward 'pikscore'") and "pickscore, hpsv2" in unknown and "geneval" in unknown
    assert "unknown key 'wieght'; the keys are name, weight" in one_problem([{"name": "pickscore", "wieght": 2}])
    assert "weight must be a finite number, got nan" in one_problem([{"name": "pickscore", "weight": math.nan}])
    assert "every weight is 0" in one_problem([{"name": "pickscore", "weight": 0}, {"name": "aesthetic", "weight": 0.0}])
    assert "cannot import no_such_module_xyz" in one_problem([{"name": "no_such_module_xyz:Thing"}])
    assert "has no attribute 'Missing'" in one_problem([{"name": "online_stubs:Missing"}])
    assert "scores videos only" in one_problem([{"name": "temporal_consistency"}])
    assert "needs a plugin whose media is 'video'" in one_problem([{"name": "online_stubs:Brightness"}], media="video")
    assert "listed more than once" in one_problem([{"name": "pickscore"}, {"name": "pickscore", "weight": 2}])
    assert "batch_size must be an integer >= 1" in one_problem([{"name": "pickscore", "batch_size": 0}])
    assert "every:N needs N >= 1" in one_problem([{"name": "pickscore", "frames": "every:0"}])
    assert "non-empty list" in one_problem([])


def test_loading_refuses_what_the_check_finds():
    with pytest.raises(RewardSpecError, match=r"rewards\[1\]: unknown reward 'pikscore'") as caught:
        load_online_rewards([{"name": "pickscore"}, {"name": "pikscore"}], "cpu")
    assert isinstance(caught.value, DiffalignError)
    with pytest.raises(RewardSpecError, match="without a score method"):
        load_online_rewards([{"name": "online_stubs:NoScore"}], "cpu")


def test_a_factory_plugin_gets_the_path_and_the_device():
    rewards = load_online_rewards([{"name": "online_stubs:brightness_factory", "path": "weights/b"}], "cpu")
    assert rewards.labels == ["factory"] and rewards.members[0].seen == ("weights/b", "cpu")


# ----------------------------------------------------------------------------- the toy reward as a plugin
def test_the_toy_reward_loads_as_a_plugin_and_scores_by_hand():
    red, grey = torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.5, 0.5, 0.5])
    images = red.view(1, 3, 1, 1).repeat(3, 1, 4, 4)
    images[1, :, :, 2:] = grey.view(3, 1, 1)  # right half background
    images[2] = torch.tensor([0.9, 0.1, 0.25]).view(3, 1, 1)  # 0.15 (one width) from red everywhere
    rewards = load_online_rewards([{"name": "diffalign.toy.reward:ToyReward"}], "cpu")
    scores = rewards(images, ["a red circle", "a red square", "a red square"])["toy_reward"]
    grey_on_red = math.exp(-3 * 0.4**2 / (2 * 0.15**2))  # ‖grey − red‖² = 3 · 0.16: ≈ 2e-5
    torch.testing.assert_close(scores, torch.tensor([1.0, (1 + grey_on_red) / 2, math.exp(-0.5)]))
    blue = rewards(images[:1], ["a blue square"])["toy_reward"]  # red is ‖(0.8, 0.1, 0.8)‖² = 1.29 from blue
    assert blue.item() == pytest.approx(math.exp(-1.29 / (2 * 0.15**2)), rel=1e-4)
