"""Fixtures of the reward-model tests: every registered reward at toy size, and small images."""

import pytest
from reward_images import smooth_images

from diffalign.rewards import REWARDS
from diffalign.rewards.tiny import tiny_reward


@pytest.fixture(scope="session")
def tiny_rewards():
    """``name -> tiny reward model`` of every registered reward, built once."""
    return {name: tiny_reward(name) for name in REWARDS}


@pytest.fixture(scope="session", params=list(REWARDS))
def reward(request, tiny_rewards):
    """Each registered reward in turn, at toy size."""
    return tiny_rewards[request.param]


@pytest.fixture(scope="session")
def images():
    """Four distinct 48 × 40 (h × w) images: every model must resize and crop or pad them."""
    return smooth_images(4)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A saved tiny CLIPModel folder with tokenizer and preprocessor config (exp(logit_scale) = 20)."""
    from diffalign.rewards.tiny import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))
