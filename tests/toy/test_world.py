"""The toy world and its reward."""

import torch

from diffalign.toy.reward import follows_prompt, toy_reward
from diffalign.toy.world import BACKGROUND, COLOURS, PROMPTS, Scene, render, sample_images


def test_render_size_colour_and_background():
    image = render(Scene("red", "square", 4.0, (16.0, 16.0)))
    assert image.shape == (3, 32, 32)
    assert torch.allclose(image[:, 16, 16], torch.tensor(COLOURS["red"]))
    assert torch.allclose(image[:, 0, 0], torch.tensor(BACKGROUND))
    # An 8×8 square: 64 pixels of 1024 are red.
    red = (image - torch.tensor(COLOURS["red"]).view(3, 1, 1)).abs().sum(0) < 1e-3
    assert red.sum() == 64


def test_reward_is_coverage_of_the_prompted_colour():
    small = render(Scene("blue", "circle", 3.0, (16.0, 16.0)))
    large = render(Scene("blue", "circle", 10.0, (16.0, 16.0)))
    rewards = toy_reward(torch.stack([small, large]), ["a blue circle"] * 2)
    # By area: π·3²/1024 ≈ 0.028 and π·10²/1024 ≈ 0.307 (edges soften it slightly).
    assert abs(rewards[0] - 0.028) < 0.01 and abs(rewards[1] - 0.307) < 0.02
    wrong = toy_reward(large[None], ["a red circle"])
    assert wrong < 0.01


def test_prompt_following():
    images = torch.stack([render(Scene("green", "square", 6.0, (16.0, 16.0))), torch.full((3, 32, 32), 0.5)])
    assert follows_prompt(images, ["a green square", "a green square"]).tolist() == [True, False]
    assert follows_prompt(images[:1], ["a yellow square"]).tolist() == [False]


def test_sampled_world_covers_the_grammar_and_varies_in_size():
    images, prompts = sample_images(400, seed=1)
    assert set(prompts) == set(PROMPTS)
    rewards = toy_reward(images, prompts)
    assert rewards.std() > 0.05  # sizes vary, so the reward has something to rank
    assert follows_prompt(images, prompts).all()
    again, _ = sample_images(400, seed=1)
    assert torch.equal(images, again)
