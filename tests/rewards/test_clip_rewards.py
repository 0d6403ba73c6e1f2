"""PickScore and CLIP score against transformers' own CLIPModel forward, and the v4/v5 shim."""

from types import SimpleNamespace

import pytest
import torch
from reward_images import clip_normalise, smooth_images, as_tensor

from diffalign.rewards import CLIPScore, PickScore
from diffalign.rewards.clip import projected
from diffalign.testing import tiny_clip_tokenizer

PROMPTS = ["a red circle", "a photo of a cat", "a red circle"]


def _hf_logits(clip, pixels, prompts):
    """``[B]`` exp(logit_scale) · cos of each image with its own prompt, by ``CLIPModel.forward``."""
    tokens = tiny_clip_tokenizer()(prompts, padding=True, return_tensors="pt")
    out = clip(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=clip_normalise(pixels))
    return out.logits_per_image.diagonal(), (out.image_embeds * out.text_embeds).sum(-1)


def test_projected_accepts_tensors_and_output_objects():
    features = torch.randn(2, 4)
    assert projected(features) is features  # transformers < 5
    assert projected(SimpleNamespace(pooler_output=features, last_hidden_state=None)) is features  # transformers 5
    with pytest.raises(TypeError, match="pooler_output"):
        projected(SimpleNamespace(last_hidden_state=features))


def test_pickscore_is_exp_logit_scale_times_cosine(tiny_rewards):
    """Expected values from transformers' forward: logits_per_image = exp(logit_scale) · cos."""
    reward = tiny_rewards["pickscore"]
    pixels = as_tensor(smooth_images(3, 32, 32))  # already 32 × 32: no resizing
    logits, cosine = _hf_logits(reward.clip, pixels, PROMPTS)
    scores = reward.score(pixels, PROMPTS)
    assert torch.allclose(scores, logits, atol=1e-4)
    assert torch.allclose(scores, 20.0 * cosine, atol=1e-4)  # the toy model's exp(logit_scale) is 20


def test_pickscore_group_probs_are_the_softmax_over_one_prompts_images(tiny_rewards):
    reward = tiny_rewards["pickscore"]
    pixels = as_tensor(smooth_images(3, 32, 32))
    logits, _ = _hf_logits(reward.clip, pixels, ["a red circle"] * 3)
    probs = reward.group_probs(pixels, "a red circle")
    assert torch.allclose(probs, torch.softmax(logits, 0), atol=1e-5)
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_each_distinct_prompt_is_encoded_once_and_gathered_back(tiny_rewards):
    reward = tiny_rewards["pickscore"]
    batched = reward.text_features(["b", "a cat", "b", "a cat", "c"])
    single = torch.cat([reward.text_features([p]) for p in ["b", "a cat", "b", "a cat", "c"]])
    assert torch.allclose(batched, single, atol=1e-6)


def test_clip_score_is_100_cosine_clamped_at_zero(tiny_rewards):
    reward = tiny_rewards["clip_score"]
    pixels = as_tensor(smooth_images(3, 32, 32))
    _, cosine = _hf_logits(reward.clip, pixels, PROMPTS)
    assert torch.allclose(reward.score(pixels, PROMPTS), (100 * cosine).clamp(min=0), atol=1e-3)


class _FixedCosine(CLIPScore):
    def cosine(self, pixels, prompts):
        return torch.tensor([-0.3, 0.0, 0.25])


def test_clamp_and_unclamped_variant():
    clamped = _FixedCosine(None, None, None, backbone="b")
    unclamped = _FixedCosine(None, None, None, backbone="b", clamp=False)
    assert clamped.score_pixels(None, []).tolist() == pytest.approx([0.0, 0.0, 25.0])
    assert unclamped.score_pixels(None, []).tolist() == pytest.approx([-30.0, 0.0, 25.0])
    assert clamped.label == "clip_score[b]" and unclamped.label == "clip_score[b][unclamped]"


def test_pickscore_loads_from_a_folder(tiny_rewards, tiny_clip_dir):
    loaded = PickScore.from_pretrained(tiny_clip_dir, dtype=torch.float32, device="cpu")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.transform.size == 32  # read from the folder's preprocessor_config.json
    images = smooth_images(3)
    assert torch.allclose(loaded.score(images, PROMPTS), tiny_rewards["pickscore"].score(images, PROMPTS), atol=1e-5)


def test_clip_score_names_its_backbone(tiny_clip_dir):
    loaded = CLIPScore.from_pretrained(tiny_clip_dir, dtype=torch.bfloat16)
    assert loaded.label == f"clip_score[{tiny_clip_dir}]"
    assert loaded.dtype == torch.bfloat16
