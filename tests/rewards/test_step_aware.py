"""The step-aware preference model (SPO's SPM): identity init, time conditioning, the authors'
checkpoint loaded (its key map: test_step_aware_authors.py) and the one-step estimate it scores
(tiny models). Its training: tests/training/test_step_aware_training.py."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from reward_images import as_tensor, clip_normalise, smooth_images

from diffalign.rewards.base import RewardLoadError
from diffalign.rewards.step_aware import StepAwarePreferenceModel, pixels_from_noisy
from diffalign.rewards.tiny import save_tiny_clip, save_tiny_step_aware_authors_layout, tiny_step_aware

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a red cat", "a blue dog", "a green circle"]


@pytest.fixture(scope="module")
def pixels():
    return as_tensor(smooth_images(3))  # [3, 3, 48, 40] in [0, 1]


def clip_logits(model, pixels, prompts):
    """transformers' own ``CLIPModel`` forward on the SPM's preprocessed pixels: the plain score."""
    tokens = model.tokenize(prompts)
    out = model.clip(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                     pixel_values=model.transform(pixels))
    return out.logits_per_image.diagonal()


# ----------------------------------------------------------------------------------- the model
def test_an_untrained_spm_scores_as_its_clip_backbone_at_every_time(pixels):
    model = tiny_step_aware(seed=0)
    expected = clip_logits(model, pixels, PROMPTS)
    for t in (0.0, 0.3, 1.0):
        torch.testing.assert_close(model.score_noisy(pixels, PROMPTS, t), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.score_noisy(pixels, PROMPTS, torch.tensor([0.0, 0.5, 0.9])), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.score(pixels, PROMPTS), expected, atol=1e-5, rtol=0)  # the clean score: t = 0
    assert model.group_probs_noisy(pixels, "a cat", 0.4).sum().item() == pytest.approx(1.0)


def test_time_changes_the_score_once_the_adaln_weights_are_nonzero(pixels):
    model = tiny_step_aware(seed=0, time_std=0.5)
    early, late = model.score_noisy(pixels, PROMPTS, 0.1), model.score_noisy(pixels, PROMPTS, 0.9)
    assert (early - late).abs().min() > 1e-3
    assert model.score_noisy(pixels, PROMPTS, torch.tensor([0.1, 0.9, 0.1]))[1] == pytest.approx(late[1].item(), abs=1e-5)


def test_the_timestep_embedder_sees_the_ddpm_index_through_dit_sinusoids():
    model = tiny_step_aware(seed=0, time_std=0.5)
    t = torch.tensor([0.0, 0.25, 1.0])
    # DiT's timestep_embedding, written out: [cos, sin] of (t · 999) · exp(−ln(10⁴) · k / 128).
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
    args = (t * 999)[:, None] * freqs[None]
    expected = model.time.embedder(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))
    torch.testing.assert_close(model.time(t), expected)


def test_the_gates_and_the_pooled_shift_scale_sit_where_the_authors_put_them(pixels):
    model = tiny_step_aware(seed=0)
    width = model.clip.config.vision_config.hidden_size
    with torch.no_grad():
        for linear in model.time.layers:  # closing both gates (chunks 3 and 6) skips every layer
            linear.bias.zero_()
    vision, x = model.clip.vision_model, model.transform(pixels)
    skipped = vision.post_layernorm(vision.pre_layrnorm(vision.embeddings(x))[:, 0])
    expected = F.normalize(model.clip.visual_projection(skipped), dim=-1)
    torch.testing.assert_close(model.image_features(x, torch.full((3,), 0.5)), expected)
    with torch.no_grad():  # pooled (shift, scale): scale = −1 zeroes the pooled output, so the score is 0
        model.time.pooled.bias[width:] = -1.0
    assert model.score_noisy(pixels, PROMPTS, 0.5).abs().max().item() == 0.0


def test_the_tensor_preprocessing_is_the_authors_resize_crop_and_clamp(pixels):
    model = tiny_step_aware(seed=0)
    # 48 × 40 → shortest side 32: (int(48·0.8 + 0.5), 32) = (38, 32); torchvision's centre crop.
    from torchvision.transforms.functional import center_crop

    resized = F.interpolate(pixels, size=(38, 32), mode="bicubic", align_corners=False)
    expected = clip_normalise(center_crop(resized, [32, 32]).clamp(0, 1))
    torch.testing.assert_close(model.transform(pixels), expected)


def test_gradients_reach_the_time_conditioning_only_when_it_trains(pixels):
    model = tiny_step_aware(seed=0)
    assert not any(p.requires_grad for p in model.parameters())  # loaded frozen
    model.train_parameters("time")
    model.score_noisy(pixels, PROMPTS, 0.5).sum().backward()
    assert model.time.layers[0].weight.grad.abs().sum() > 0 and model.time.pooled.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.clip.parameters())
    model.zero_grad(set_to_none=True)
    model.train_parameters("all")
    model.score_noisy(pixels, PROMPTS, 0.5).sum().backward()
    assert model.clip.visual_projection.weight.grad.abs().sum() > 0
    assert model.time.layers[1].weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------- loading
def test_save_pretrained_round_trip(tmp_path, pixels):
    model = tiny_step_aware(seed=1, time_std=0.5)
    model.save_pretrained(tmp_path / "spm")
    loaded = StepAwarePreferenceModel.from_pretrained(tmp_path / "spm")
    t = torch.tensor([0.0, 0.4, 0.8])
    torch.testing.assert_close(loaded.score_noisy(pixels, PROMPTS, t), model.score_noisy(pixels, PROMPTS, t), atol=0, rtol=0)


def test_from_pretrained_refuses_a_plain_clip_folder(tmp_path):
    with pytest.raises(RewardLoadError, match="from_clip"):
        StepAwarePreferenceModel.from_pretrained(save_tiny_clip(tmp_path / "clip"))


def test_the_authors_checkpoint_loads_and_scores_as_its_source(tmp_path, pixels):
    checkpoint, clip_source = save_tiny_step_aware_authors_layout(tmp_path, seed=3, time_std=0.5)
    loaded = StepAwarePreferenceModel.from_authors_checkpoint(checkpoint, clip_source)
    source = tiny_step_aware(seed=3, time_std=0.5)
    for t in (0.0, 0.25, 0.95):
        torch.testing.assert_close(loaded.score_noisy(pixels, PROMPTS, t), source.score_noisy(pixels, PROMPTS, t), atol=0, rtol=0)
    # a folder holding the released file name works too
    assert StepAwarePreferenceModel.from_authors_checkpoint(tmp_path, clip_source).score(pixels, PROMPTS).shape == (3,)


def test_a_bad_checkpoint_names_the_keys(tmp_path):
    checkpoint, clip_source = save_tiny_step_aware_authors_layout(tmp_path)
    state = torch.load(checkpoint, weights_only=True)
    state["model.extra_head.weight"] = torch.zeros(2)
    torch.save(state, checkpoint)
    with pytest.raises(RewardLoadError, match="extra_head"):
        StepAwarePreferenceModel.from_authors_checkpoint(checkpoint, clip_source)
    del state["model.extra_head.weight"], state["model.t_embedder.mlp.0.weight"]
    torch.save(state, checkpoint)
    with pytest.raises(RewardLoadError, match=r"missing \['time.embedder.linear_1.weight'\]"):
        StepAwarePreferenceModel.from_authors_checkpoint(checkpoint, clip_source)
    with pytest.raises(RewardLoadError, match="sd-v1-5_step-aware_preference_model.bin"):
        StepAwarePreferenceModel.from_authors_checkpoint(tmp_path / "clip-config", clip_source)


def test_a_folder_is_searched_for_the_asked_release_and_the_old_keyword_warns(tmp_path, pixels):
    _, clip_source = save_tiny_step_aware_authors_layout(tmp_path)  # writes the v1-5 file
    expected = StepAwarePreferenceModel.from_authors_checkpoint(tmp_path, clip_source, release="v1-5").score(pixels, PROMPTS)
    with pytest.raises(RewardLoadError, match="sdxl_step-aware_preference_model.bin"):
        StepAwarePreferenceModel.from_authors_checkpoint(tmp_path, clip_source, release="xl")
    with pytest.warns(DeprecationWarning, match=r"base='sd15'\) is deprecated: use release='v1-5'"):
        old = StepAwarePreferenceModel.from_authors_checkpoint(tmp_path, clip_source, base="sd15")
    torch.testing.assert_close(old.score(pixels, PROMPTS), expected, atol=0, rtol=0)
    with pytest.warns(DeprecationWarning, match="'sd15' is now called 'v1-5'"):
        StepAwarePreferenceModel.from_authors_checkpoint(tmp_path, clip_source, release="sd15")
    with pytest.raises(ValueError, match="release must be one of v1-5, xl, got 'v2'"):
        StepAwarePreferenceModel.from_authors_checkpoint(tmp_path, clip_source, release="v2")


def test_pixels_from_noisy_decodes_the_guided_one_step_estimate(tiny_path):
    from diffalign.families import load

    family = load(tiny_path("sd15"))
    unet, vae, scheduler = family.pipe.unet, family.pipe.vae, family.train_scheduler
    noisy = torch.randn(1, 2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500 / 999])
    cond, uncond = family.encode_prompts(["a cat"], group_size=2), family.encode_prompts([""], group_size=2)
    out = pixels_from_noisy(family, unet, noisy, t, cond, uncond, guidance=3.0)
    with torch.no_grad():  # by hand: ε = ε(∅) + 3·(ε(c) − ε(∅)); x̂0 = (x − √(1−ᾱ)·ε)/√ᾱ at index 500
        flat = noisy[0]
        e_c = unet(flat, 500, encoder_hidden_states=cond.prompt_embeds[0]).sample
        e_u = unet(flat, 500, encoder_hidden_states=uncond.prompt_embeds[0]).sample
        abar = scheduler.alphas_cumprod[500]
        x0 = (flat - (1 - abar).sqrt() * (e_u + 3 * (e_c - e_u))) / abar.sqrt()
        expected = (vae.decode(x0 / vae.config.scaling_factor).sample.clamp(-1, 1) / 2 + 0.5)
    assert out.shape == (1, 2, 3, 32, 32)
    torch.testing.assert_close(out[0], expected, atol=1e-5, rtol=1e-5)
