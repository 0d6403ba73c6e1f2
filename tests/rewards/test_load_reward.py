"""The registry, ``load_reward``, and errors that name the missing files and where they were sought."""

import pytest
import torch

from diffalign.rewards import REWARDS, RewardLoadError, load_reward


def test_registry_names():
    assert list(REWARDS) == ["pickscore", "hpsv2", "hpsv2.1", "image_reward", "clip_score", "aesthetic"]
    assert all(cls.name == name for name, cls in REWARDS.items())


def test_unknown_names_get_a_suggestion():
    with pytest.raises(ValueError, match="did you mean 'pickscore'"):
        load_reward("pikscore")


def test_load_in_dtype_and_device(tiny_clip_dir):
    reward = load_reward("pickscore", tiny_clip_dir, dtype=torch.float16, device="cpu")
    assert reward.dtype == torch.float16 and reward.device.type == "cpu"
    assert not reward.training and not any(p.requires_grad for p in reward.parameters())


@pytest.mark.parametrize("name, files", [
    ("pickscore", ["config.json", "model.safetensors"]),
    ("clip_score", ["config.json", "model.safetensors"]),
    ("hpsv2", ["HPS_v2_compressed.pt"]),
    ("hpsv2.1", ["HPS_v2.1_compressed.pt"]),
    ("image_reward", ["ImageReward.pt"]),
])
def test_an_empty_folder_names_the_missing_files(name, files, tmp_path):
    with pytest.raises(RewardLoadError) as error:
        load_reward(name, tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message and all(f in message for f in files), message


def test_an_unreachable_hub_repo_names_file_repo_and_cache():
    # Tests run with HF_HUB_OFFLINE=1: only the (empty) cache can be searched.
    with pytest.raises(RewardLoadError) as error:
        load_reward("hpsv2.1", "nobody/no-such-hps")
    message = str(error.value)
    assert "HPS_v2.1_compressed.pt" in message and "nobody/no-such-hps" in message and "cache" in message


def test_a_path_that_is_neither_file_folder_nor_hub_id(tmp_path):
    with pytest.raises(RewardLoadError, match="neither"):
        load_reward("image_reward", tmp_path / "missing" / "ImageReward.pt")


def test_a_pickled_checkpoint_is_refused(tmp_path):
    # weights_only=True: a checkpoint that needs arbitrary unpickling is not executed.
    torch.save({"state_dict": {"x": torch.zeros(1)}, "object": _Pickled()}, tmp_path / "HPS_v2.1_compressed.pt")
    with pytest.raises(RewardLoadError, match="tensors-only"):
        load_reward("hpsv2.1", tmp_path)


class _Pickled:
    pass
