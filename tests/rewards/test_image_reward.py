"""ImageReward: a checkpoint in the original BLIP/ImageReward layout loads into our transformers
re-implementation and gives the original-layout model's standardised score (to 1e-5)."""

import json

import pytest
import torch
from blip_original import ImageRewardOriginal
from reward_images import as_tensor, clip_normalise, smooth_images

from diffalign.rewards import ImageReward, RewardLoadError
from diffalign.rewards.image_reward import MAX_TOKENS, blip_tokenizer, image_reward_to_ours
from diffalign.rewards.tiny import TINY_BLIP_VISION, tiny_bert_tokenizer, tiny_med_config

PROMPTS = ["a red circle", "a photo of a cat on a blue square", "dog"]


@pytest.fixture(scope="module")
def original():
    return ImageRewardOriginal(tiny_med_config(), TINY_BLIP_VISION).randomise().double().eval()


@pytest.fixture(scope="module")
def release(tmp_path_factory, original):
    """A folder as the hub repo THUDM/ImageReward holds it (+ the tokenizer): ImageReward.pt, med_config.json."""
    folder = tmp_path_factory.mktemp("image-reward")
    torch.save(original.state_dict(), folder / "ImageReward.pt")
    (folder / "med_config.json").write_text(json.dumps(tiny_med_config()))
    tiny_bert_tokenizer().save_pretrained(folder)
    return folder


def _original_scores(original, pixels, prompts):
    tokens = blip_tokenizer(tiny_bert_tokenizer())(prompts, padding="max_length", truncation=True,
                                                   max_length=35, return_tensors="pt")
    with torch.no_grad():
        return original.score(clip_normalise(pixels), tokens.input_ids, tokens.attention_mask)


def test_original_layout_checkpoint_scores_the_same(release, original):
    ours = ImageReward.from_pretrained(release, dtype=torch.float64, vision_config=TINY_BLIP_VISION)
    pixels = as_tensor(smooth_images(3, 32, 32)).double()
    expected = _original_scores(original, pixels, PROMPTS)
    assert torch.allclose(ours.score(pixels, PROMPTS).double(), expected, atol=1e-5)
    assert (expected.max() - expected.min()) > 0.1  # distinct scores: a wrong mapping could not pass


def test_standardisation_constants(release, original):
    """(r − 0.16717362830052426) / 1.0333394966054072 (ImageReward.py); r is the MLP output."""
    ours = ImageReward.from_pretrained(release, dtype=torch.float64, vision_config=TINY_BLIP_VISION)
    pixels = as_tensor(smooth_images(2, 32, 32, seed=1)).double()
    raw = _original_scores(original, pixels, PROMPTS[:2]) * 1.0333394966054072 + 0.16717362830052426
    ours.head.layers[-1].bias.data += 1.0  # raise the raw reward by exactly 1
    try:
        shifted = ours.score(pixels, PROMPTS[:2]).double()
    finally:
        ours.head.layers[-1].bias.data -= 1.0
    assert torch.allclose(shifted, (raw + 1.0 - 0.16717362830052426) / 1.0333394966054072, atol=1e-5)


def test_prompts_are_cut_at_35_tokens(release):
    assert MAX_TOKENS == 35
    ours = ImageReward.from_pretrained(release, vision_config=TINY_BLIP_VISION)
    pixels = as_tensor(smooth_images(1, 32, 32))
    long = "a " * 40
    assert torch.equal(ours.score(pixels, long + "cat"), ours.score(pixels, long + "dog"))


def test_tokenizer_gets_blips_special_tokens():
    tokenizer = blip_tokenizer(tiny_bert_tokenizer())
    assert len(tokenizer) == len(tiny_bert_tokenizer()) + 2 == tiny_med_config()["vocab_size"]
    assert tokenizer.bos_token == "[DEC]" and "[ENC]" in tokenizer.all_special_tokens
    assert tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [len(tokenizer) - 2, len(tokenizer) - 1]


def test_unused_keys_are_dropped_and_unknown_ones_refused(original):
    state = original.state_dict()
    mapped = image_reward_to_ours(state)
    assert not any("proj" in k and k.startswith("blip") for k in mapped) and "text.embeddings.position_ids" not in mapped
    assert torch.equal(mapped["vision.embeddings.class_embedding"], state["blip.visual_encoder.cls_token"])
    assert torch.equal(mapped["vision.encoder.layers.1.self_attn.projection.weight"],
                       state["blip.visual_encoder.blocks.1.attn.proj.weight"])
    with pytest.raises(RewardLoadError, match="visual_encoder_m"):
        image_reward_to_ours({**state, "blip.visual_encoder_m.cls_token": torch.zeros(1)})


def test_missing_files_are_named(tmp_path, release):
    with pytest.raises(RewardLoadError, match=r"ImageReward\.pt.*" + str(tmp_path)):
        ImageReward.from_pretrained(tmp_path)
    (tmp_path / "ImageReward.pt").write_bytes((release / "ImageReward.pt").read_bytes())
    with pytest.raises(RewardLoadError, match=r"med_config\.json.*" + str(tmp_path)):
        ImageReward.from_pretrained(tmp_path, vision_config=TINY_BLIP_VISION)
