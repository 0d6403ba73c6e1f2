"""HPSv2/v2.1: an OpenCLIP checkpoint in the original layout loads into our transformers CLIPModel
and scores as OpenCLIP does (to 1e-5), × 100, with the version in the label."""

import pytest
import torch
from reward_images import as_tensor, clip_normalise, smooth_images

from diffalign.rewards import REWARDS, HPSv2, HPSv21, RewardLoadError
from diffalign.rewards.hps import open_clip_to_transformers
from diffalign.rewards.tiny import TINY_OPEN_CLIP, save_tiny_hps, tiny_open_clip

PROMPTS = ["a red circle", "a photo of a cat", "a blue square"]


def _open_clip_cosine(model, normalised_pixels, prompts):
    """Cosine of image and prompt by OpenCLIP itself (the official HPS code path)."""
    import open_clip

    tokens = open_clip.get_tokenizer("ViT-H-14")(prompts)  # OpenCLIP's SimpleTokenizer, as HPSv2 uses
    with torch.no_grad():
        image = model.encode_image(normalised_pixels, normalize=True)
        text = model.encode_text(tokens, normalize=True)
    return (image * text).sum(-1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny OpenCLIP model saved as HPS_v2.1_compressed.pt ({"state_dict": ...}), exp(logit_scale) = 30."""
    return save_tiny_hps(tmp_path_factory.mktemp("hps"), "v2.1")


@pytest.fixture(scope="module")
def original():
    return tiny_open_clip().double()


def test_checkpoint_in_the_open_clip_layout_scores_as_open_clip(checkpoint, original):
    ours = HPSv21.from_pretrained(checkpoint.parent, dtype=torch.float64, architecture=TINY_OPEN_CLIP)
    pixels = as_tensor(smooth_images(3, 32, 32)).double()
    expected = 100 * _open_clip_cosine(original, clip_normalise(pixels), PROMPTS)
    scores = ours.score(pixels, PROMPTS).double()
    assert torch.allclose(scores, expected, atol=1e-5), (scores, expected)
    assert (expected.max() - expected.min()) > 1.0  # the images score differently: the check has teeth


def test_pil_path_follows_the_official_preprocessing(checkpoint, original):
    """HPSv2's validation transform, written with torchvision: to tensor, longest side -> 32 bicubic,
    centred black padding, OpenAI CLIP normalisation."""
    tvf = pytest.importorskip("torchvision.transforms.functional")
    images = smooth_images(2, height=48, width=40, seed=5)
    batch = []
    for image in images:
        x = tvf.to_tensor(image)
        x = tvf.resize(x, [32, round(40 * 32 / 48)], interpolation=tvf.InterpolationMode.BICUBIC)
        pad = 32 - x.shape[-1]
        batch.append(tvf.pad(x, [pad // 2, 0, pad - pad // 2, 0], fill=0))
    expected = 100 * _open_clip_cosine(original, clip_normalise(torch.stack(batch).double()), PROMPTS[:2])
    ours = HPSv21.from_pretrained(checkpoint, dtype=torch.float64, architecture=TINY_OPEN_CLIP)
    assert torch.allclose(ours.score(images, PROMPTS[:2]).double(), expected, atol=1e-5)


def test_score_ignores_logit_scale_but_group_probs_use_it(checkpoint, original):
    ours = HPSv21.from_pretrained(checkpoint, dtype=torch.float64, architecture=TINY_OPEN_CLIP)
    pixels = as_tensor(smooth_images(3, 32, 32)).double()
    cosine = _open_clip_cosine(original, clip_normalise(pixels), ["a red circle"] * 3)
    assert torch.allclose(ours.score(pixels, "a red circle").double(), 100 * cosine, atol=1e-5)
    # HPSv2 trains a softmax over a prompt's images of exp(logit_scale) · cos; the toy's scale is 30.
    assert torch.allclose(ours.group_probs(pixels, "a red circle").double(), torch.softmax(30 * cosine, 0), atol=1e-6)


def test_versions_are_named_and_look_for_their_own_file(tmp_path):
    assert REWARDS["hpsv2"] is HPSv2 and REWARDS["hpsv2.1"] is HPSv21
    assert (HPSv2.checkpoint, HPSv21.checkpoint) == ("HPS_v2_compressed.pt", "HPS_v2.1_compressed.pt")
    save_tiny_hps(tmp_path, "v2.1")
    assert HPSv21.from_pretrained(tmp_path, architecture=TINY_OPEN_CLIP).label == "hpsv2.1"
    with pytest.raises(RewardLoadError, match=r"HPS_v2_compressed\.pt.*" + str(tmp_path).replace(".", r"\.")):
        HPSv2.from_pretrained(tmp_path, architecture=TINY_OPEN_CLIP)  # v2.0 is a different file


def test_mapping_splits_fused_attention_and_transposes_projections(original):
    state = original.state_dict()
    mapped = open_clip_to_transformers(state)
    fused = state["visual.transformer.resblocks.0.attn.in_proj_weight"]
    width = fused.shape[1]
    assert torch.equal(mapped["vision_model.encoder.layers.0.self_attn.k_proj.weight"], fused[width : 2 * width])
    assert torch.equal(mapped["text_projection.weight"], state["text_projection"].t())
    assert torch.equal(mapped["visual_projection.weight"], state["visual.proj"].t())


def test_unknown_open_clip_keys_are_refused(original):
    state = dict(original.state_dict())
    state["visual.transformer.resblocks.0.ls_1.gamma"] = torch.ones(32)  # layer scale: not in HPS's ViT-H-14
    with pytest.raises(RewardLoadError, match="ls_1"):
        open_clip_to_transformers(state)


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path, original):
    torch.save({"state_dict": original.state_dict()}, tmp_path / "HPS_v2.1_compressed.pt")
    other = {**TINY_OPEN_CLIP, "vision_cfg": {**TINY_OPEN_CLIP["vision_cfg"], "layers": 3}}
    with pytest.raises(RewardLoadError, match="does not fit"):
        HPSv21.from_pretrained(tmp_path, architecture=other)
