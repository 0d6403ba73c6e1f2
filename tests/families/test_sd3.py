"""SD3 specifics: shifted logit-normal time sampling, SD3 loss weightings, T5 optional."""

import math

import pytest
import torch

from diffalign.families import FamilyError, load


def _shifted_sigmas(shift=3.0, n=1000):
    """FlowMatchEuler's training sigmas written out: s = k/n, σ = shift·s / (1 + (shift − 1)·s)."""
    s = torch.arange(n, 0, -1, dtype=torch.float64) / n
    return (shift * s / (1 + (shift - 1) * s)).float()


def test_time_is_a_shifted_training_sigma(tiny_path):
    family = load(tiny_path("sd3"))
    latents = torch.zeros(4000, 1, 4, 2, 2)
    _, t = family.sample_noise_and_time(latents, torch.Generator().manual_seed(0))
    sigmas = _shifted_sigmas()
    nearest = (t[:, None] - sigmas[None, :]).abs().min(dim=1).values
    assert nearest.max() < 1e-6
    # logit-normal(0, 1) is symmetric around u = 0.5; the shift of 3 pushes σ upward.
    assert 0.65 < t.mean() < 0.8


def test_uniform_time_sampling_option(tiny_path):
    family = load(tiny_path("sd3"), time_sampling="uniform", logit_std=1.0)
    _, t = family.sample_noise_and_time(torch.zeros(4000, 1, 4, 2, 2), torch.Generator().manual_seed(0))
    # Uniform u through the shift: E[σ] = ∫ 3u / (1 + 2u) du over [0, 1] = 1.5 − 0.75·ln 3.
    assert abs(t.mean().item() - (1.5 - 0.75 * math.log(3))) < 0.02


def test_transformer_sees_sigma_times_1000(tiny_path):
    family = load(tiny_path("sd3"))
    seen = {}
    handle = family.denoiser.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    latents = torch.randn(2, 2, 4, 8, 8)
    noise, t = family.sample_noise_and_time(latents)
    try:
        family.denoising_error(family.denoiser, latents, family.encode_prompts(["a", "b"], group_size=2), noise, t)
    finally:
        handle.remove()
    torch.testing.assert_close(seen["timestep"], t.repeat_interleave(2) * 1000)
    assert seen["pooled_projections"].shape == (4, 32)


def test_cosmap_weighting(tiny_path):
    family = load(tiny_path("sd3"), loss_weighting="cosmap")
    sigma = torch.tensor([0.1, 0.5, 0.9])
    torch.testing.assert_close(family.loss_weight(sigma), 2 / (math.pi * (1 - 2 * sigma + 2 * sigma**2)))
    with pytest.raises(FamilyError, match="min_snr"):
        load(tiny_path("sd3"), loss_weighting="min_snr")


def test_without_t5(tiny_path):
    folder = tiny_path("sd3", with_t5=False)
    family = load(folder)
    assert family.pipe.text_encoder_3 is None
    cond = family.encode_prompts(["a red cat"])
    # 77 CLIP tokens then 256 zero T5 tokens, as the SD3 pipeline builds them without T5.
    assert cond.prompt_embeds.shape == (1, 1, 77 + 256, 32)
    assert torch.all(cond.prompt_embeds[0, 0, 77:] == 0)


def test_use_t5_false_skips_loading_it(tiny_path):
    family = load(tiny_path("sd3"), use_t5=False, max_sequence_length=16)
    assert family.pipe.text_encoder_3 is None
    assert family.encode_prompts(["a"]).prompt_embeds.shape[2] == 77 + 16
    with_t5 = load(tiny_path("sd3"))
    assert with_t5.pipe.text_encoder_3 is not None
    assert not torch.all(with_t5.encode_prompts(["a cat"]).prompt_embeds[0, 0, 77:] == 0)
