"""The RewardModel contract, checked on every registered reward at toy size."""

import copy

import pytest
import torch
from reward_images import as_tensor, smooth_images

from diffalign.rewards.base import finish

PROMPTS = ["a red circle", "a photo of a cat", "a blue square", "a dog"]


def test_one_float32_score_per_image(reward, images):
    scores = reward.score(images, PROMPTS)
    assert scores.shape == (4,) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()
    assert reward.score(as_tensor(images[:2]), PROMPTS[:2]).shape == (2,)


def test_loaded_in_eval_mode_and_frozen(reward):
    assert not reward.training and not any(m.training for m in reward.modules())
    assert not any(p.requires_grad for p in reward.parameters())


def test_deterministic(reward, images):
    # The toy ImageReward has dropout 0.1: equal scores mean eval() really switched it off.
    first = reward.score(as_tensor(images), PROMPTS)
    assert torch.equal(first, reward.score(as_tensor(images), PROMPTS))
    assert torch.equal(reward.score(images, PROMPTS), reward.score(images, PROMPTS))


def test_scores_tell_images_apart(reward, images):
    scores = reward.score(images, ["a red circle"] * 4)
    assert (scores.max() - scores.min()) > 1e-3, "a toy model blind to its input would make the other tests vacuous"


def test_pil_and_tensor_paths_agree(reward, images):
    """Tolerance: 2 % of the spread of the scores over the four images (the toy models stay under 0.3 %).

    The tensor path resizes in float with torch's antialiased bicubic, the PIL path with PIL's
    uint8 bicubic (≤ 3/255 per pixel apart, see test_reward_preprocess.py); HPS resizes tensors
    on both paths, so it must agree to float precision.
    """
    pil = reward.score(images, PROMPTS)
    tensor = reward.score(as_tensor(images), PROMPTS)
    spread = (pil.max() - pil.min()).item()
    tolerance = 1e-5 * max(1.0, pil.abs().max().item()) if reward.transform.fit == "pad" else 0.02 * spread
    assert (pil - tensor).abs().max().item() <= tolerance, (pil, tensor)


def test_gradients_reach_the_input_tensor(reward, images):
    pixels = as_tensor(images).requires_grad_(True)
    reward.score(pixels, PROMPTS).sum().backward()
    assert pixels.grad is not None and torch.isfinite(pixels.grad).all()
    assert pixels.grad.abs().sum() > 0
    assert all(p.grad is None for p in reward.parameters()), "the reward model's weights must stay frozen"


def test_pil_path_builds_no_graph(reward, images):
    assert not reward.score(images, PROMPTS).requires_grad


def test_group_probabilities_sum_to_one(reward, images):
    probs = reward.group_probs(images, "a red circle")
    assert probs.shape == (4,) and (probs >= 0).all()
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-6)
    logits = reward.preference_logits(images, "a red circle")
    assert torch.allclose(probs, torch.softmax(logits, 0))


def test_the_prompt_matters_where_it_should(reward, images):
    with_circle = reward.score(images, ["a red circle"] * 4)
    with_dog = reward.score(images, ["a dog"] * 4)
    if reward.uses_prompts:
        assert not torch.allclose(with_circle, with_dog)
    else:
        assert torch.equal(with_circle, with_dog)


def test_one_prompt_is_shared_by_every_image(reward, images):
    assert torch.equal(reward.score(images, "a dog"), reward.score(images, ["a dog"] * 4))


def test_bad_inputs_are_refused(reward, images):
    with pytest.raises(ValueError, match="prompts"):
        reward.score(images, PROMPTS[:3])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        reward.score(torch.rand(3, 32, 32), "a dog")


def test_bfloat16_models_return_float32_scores(reward, images):
    model = finish(copy.deepcopy(reward), torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    scores = model.score(images, PROMPTS)
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()


def test_other_image_sizes(reward):
    wide = smooth_images(2, height=20, width=70, seed=3)  # upsampled, wide
    assert torch.isfinite(reward.score(wide, "a dog")).all()
    assert torch.isfinite(reward.score(as_tensor(wide), "a dog")).all()
