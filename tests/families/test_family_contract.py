"""The family contract (docs/architecture.md, "Family"), checked on every tiny family.

Expected values are computed here from first principles (the noise schedule rebuilt from its
betas, the flow interpolation written out), never by calling the code under test. The noise maths
runs on image latents ``[B, K, C, h, w]`` and on video latents ``[B, K, C, f, h, w]`` (``frames``):
nothing in it may assume the rank.
"""

import pytest
import torch

B, K = 3, 2


def _alphas_cumprod():
    """SD's "scaled_linear" schedule, as in the tiny configs: β = linspace(√0.00085, √0.012, 1000)²."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)


FRAMES = pytest.mark.parametrize("frames", [None, 3], ids=["image", "video"])
FLOW = ("sd3", "sd35", "flux", "flux2", "qwen_image", "wan", "wan22", "wan22_ti2v")


def _latent_shape(family, frames=None):
    """One item's latent shape: ``C, h, w``, or ``C, f, h, w`` with ``frames`` (a video family's
    denoiser always takes frames: 2 when none are asked for)."""
    if family.media == "video":
        frames = frames or 2
    return (family.latent_channels, *([frames] if frames else []), 8, 8)


def _group(family, seed=0, frames=None):
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(B, K, *_latent_shape(family, frames), generator=gen)
    noise, t = family.sample_noise_and_time(latents, generator=gen)
    return latents, noise, t


def _oracle(family, value):
    """A stand-in denoiser that returns ``value`` ``[N, *latent]`` whatever it is given, in the
    layout the family's denoiser answers in (FLUX: packed) and diffusers' tuple output."""
    return lambda *args, **kwargs: (family.denoiser_layout(value),)


PACKED = ("flux", "flux2", "qwen_image")
"""Families whose denoiser packs 2×2 patches of an image latent: their denoiser takes no frame
axis, so the video-rank variant of a test that calls it does not apply (the noise maths still does)."""


def _skip_frames_for_packed(tiny_kind, frames):
    if frames and tiny_kind in PACKED:
        pytest.skip(f"{tiny_kind}'s denoiser packs image latents: no frame axis")


def _per_group(values, latents):
    return values.reshape(B, *[1] * (latents.ndim - 1))


def _scales(tiny_kind, t, latents):
    """``(a_t, s_t)`` with ``x_t = a_t·x0 + s_t·ε``, rebuilt from the schedule, broadcastable to ``latents``."""
    if tiny_kind in FLOW:
        sigma = _per_group(t, latents)
        return 1 - sigma, sigma
    abar = _per_group(_alphas_cumprod()[(t * 999).round().long()].float(), latents)
    return abar.sqrt(), (1 - abar).sqrt()


@FRAMES
def test_add_noise_and_target_identities(tiny_family, tiny_kind, frames):
    latents, noise, t = _group(tiny_family, frames=frames)
    x_t = tiny_family.add_noise(latents, noise, t)
    target = tiny_family.target(latents, noise, t)
    if tiny_kind in FLOW:
        sigma = _per_group(t, latents)
        torch.testing.assert_close(x_t, (1 - sigma) * latents + sigma * noise)
        torch.testing.assert_close(target, noise - latents)
        return
    alpha, sigma = _scales(tiny_kind, t, latents)
    torch.testing.assert_close(x_t, alpha * latents + sigma * noise, rtol=1e-5, atol=1e-5)
    expected = noise if tiny_kind in ("sd15", "sdxl") else alpha * noise - sigma * latents
    torch.testing.assert_close(target, expected, rtol=1e-5, atol=1e-5)


def test_prediction_types(tiny_family, tiny_kind):
    expected = {"sd15": "epsilon", "sd21": "v_prediction", "sdxl": "epsilon", "sd3": "flow", "sd35": "flow",
                "flux": "flow", "flux2": "flow", "qwen_image": "flow", "wan": "flow", "wan22": "flow", "wan22_ti2v": "flow"}[tiny_kind]
    assert tiny_family.prediction_type == expected


@FRAMES
def test_noise_and_time_shared_within_group(tiny_family, frames):
    latents, noise, t = _group(tiny_family, frames=frames)
    assert noise.shape == latents.shape and t.shape == (B,)
    assert torch.equal(noise[:, 0], noise[:, 1])
    assert not torch.equal(noise[0, 0], noise[1, 0])  # but not across groups
    assert ((t >= 0) & (t <= 1)).all()


@FRAMES
def test_time_sampling_is_seeded(tiny_family, frames):
    _, noise_a, t_a = _group(tiny_family, seed=5, frames=frames)
    _, noise_b, t_b = _group(tiny_family, seed=5, frames=frames)
    assert torch.equal(noise_a, noise_b) and torch.equal(t_a, t_b)


def test_denoising_error_shape_and_gradient(tiny_family):
    latents, noise, t = _group(tiny_family)
    cond = tiny_family.encode_prompts(["a red cat", "a dog", "a tree"], group_size=K)
    tiny_family.denoiser.zero_grad(set_to_none=True)
    err = tiny_family.denoising_error(tiny_family.denoiser, latents, cond, noise, t)
    assert err.shape == (B, K) and torch.isfinite(err).all()
    err.sum().backward()
    grads = [p.grad for p in tiny_family.denoiser.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    tiny_family.denoiser.zero_grad(set_to_none=True)


@FRAMES
def test_true_target_beats_random_guess(tiny_family, tiny_kind, frames):
    _skip_frames_for_packed(tiny_kind, frames)
    latents, noise, t = _group(tiny_family, frames=frames)
    cond = tiny_family.encode_prompts(["a cat"] * B, group_size=K)
    truth = tiny_family.target(latents, noise, t).flatten(0, 1)
    guess = torch.randn_like(truth)
    err_truth = tiny_family.denoising_error(_oracle(tiny_family, truth), latents, cond, noise, t)
    err_guess = tiny_family.denoising_error(_oracle(tiny_family, guess), latents, cond, noise, t)
    assert torch.allclose(err_truth, torch.zeros_like(err_truth))
    assert (err_guess > 0.5).all()  # E[(g − target)²] ≥ Var(g) = 1


@FRAMES
def test_prediction_splits_into_noise_and_clean_latent(tiny_family, tiny_kind, frames):
    """Told the true target, the family recovers the true ε and x0 (inversion and sampling rely on it)."""
    latents, noise, t = _group(tiny_family, frames=frames)
    a, s = _scales(tiny_kind, t, latents)
    x_t = a * latents + s * noise
    if tiny_kind in FLOW:
        truth = noise - latents
    elif tiny_kind == "sd21":
        truth = a * noise - s * latents
    else:
        truth = noise
    eps, x0 = tiny_family.split_prediction(truth, x_t, t)
    torch.testing.assert_close(eps, noise, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x0, latents, rtol=1e-4, atol=1e-4)
    got_a, got_s = tiny_family.noise_scales(t)
    torch.testing.assert_close(_per_group(got_a, latents), a, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(_per_group(got_s, latents), s, rtol=1e-6, atol=1e-6)
    # The noise an inverted latent implies is the noise it was made with.
    torch.testing.assert_close(tiny_family.implied_noise(latents, x_t, t), noise, rtol=1e-4, atol=1e-4)


def test_per_image_prompts_reach_the_model(tiny_family):
    latents, noise, t = _group(tiny_family)
    # The same image and noise twice in each group, so only the caption can differ.
    latents = latents[:, :1].expand(B, K, *latents.shape[2:])
    x_t = tiny_family.add_noise(latents, noise, t)
    with torch.no_grad():
        same = tiny_family.predict(tiny_family.denoiser, x_t, t, tiny_family.encode_prompts([["a red cat"] * K] * B))
        differ = tiny_family.predict(
            tiny_family.denoiser, x_t, t, tiny_family.encode_prompts([["a red cat", "a blue dog"]] * B)
        )
    torch.testing.assert_close(same[:, 0], same[:, 1])
    assert (differ[:, 0] - differ[:, 1]).abs().max() > 1e-4


def test_encode_prompts_shapes(tiny_family, tiny_kind):
    cond = tiny_family.encode_prompts([["a", "b"], ["c", "d"], ["e", "f"]])
    assert cond.group_shape == (B, K)
    assert cond.prompt_embeds.ndim == 4
    assert (cond.pooled is None) == (tiny_kind in ("sd15", "sd21", "flux2", "qwen_image", "wan", "wan22", "wan22_ti2v"))
    assert (cond.time_ids is None) == (tiny_kind != "sdxl")
    # Deduplication must not change the result: "a" alone equals "a" encoded next to others.
    alone = tiny_family.encode_prompts(["a"])
    torch.testing.assert_close(alone.prompt_embeds[0, 0], cond.prompt_embeds[0, 0])


def test_mismatched_groups_are_rejected(tiny_family):
    latents, noise, t = _group(tiny_family)
    cond = tiny_family.encode_prompts(["a"] * B, group_size=K + 1)
    with pytest.raises(ValueError, match="conditioning is shaped"):
        tiny_family.denoising_error(tiny_family.denoiser, latents, cond, noise, t)
    with pytest.raises(ValueError, match="same number of captions"):
        tiny_family.encode_prompts([["a", "b"], ["c"]])


def test_images_encode_and_decode(tiny_family, tiny_kind):
    if tiny_family.media == "video":
        pytest.skip("videos: test_videos_encode_and_decode")
    pixels = torch.rand(2, K, 3, 32, 32) * 2 - 1
    latents = tiny_family.encode_images(pixels, generator=torch.Generator().manual_seed(1))
    f = tiny_family.vae_scale_factor
    assert latents.shape == (2, K, tiny_family.latent_channels, 32 // f, 32 // f)
    # By hand: (posterior sample − shift) × scale, with SD3's and FLUX's shifts and SD's none.
    vae = tiny_family.pipe.vae
    if tiny_kind == "flux2":  # patchified 2x2, normalised by the VAE's batch-norm statistics; ε drawn in that shape
        from diffalign.families.flux2 import patchify

        post = vae.encode(pixels.flatten(0, 1)).latent_dist
        bn_std = torch.sqrt(vae.bn.running_var + vae.config.batch_norm_eps).view(-1, 1, 1)
        mean = (patchify(post.mean) - vae.bn.running_mean.view(-1, 1, 1)) / bn_std
        eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(latents.flatten(0, 1), mean + patchify(post.std) / bn_std * eps, rtol=1e-5, atol=1e-5)
    elif tiny_kind == "qwen_image":  # a 3-D VAE run on one frame, normalised per channel (the tiny's own values)
        raw = vae.encode(pixels.flatten(0, 1)[:, :, None]).latent_dist.sample(torch.Generator().manual_seed(1))[:, :, 0]
        mean, std = torch.tensor([-0.3, 0.1, 0.4, -0.05]).view(4, 1, 1), torch.tensor([1.8, 0.7, 1.2, 2.5]).view(4, 1, 1)
        torch.testing.assert_close(latents.flatten(0, 1), (raw - mean) / std)
    else:
        raw = vae.encode(pixels.flatten(0, 1)).latent_dist.sample(torch.Generator().manual_seed(1))
        shift = {"sd3": 0.0609, "sd35": 0.0609, "flux": 0.1159}.get(tiny_kind, 0.0)
        torch.testing.assert_close(latents.flatten(0, 1), (raw - shift) * 0.5)
    assert tiny_family.decode(latents).shape == pixels.shape


def test_videos_encode_and_decode(tiny_family, tiny_kind):
    """A video family: ``[B, K, 3, F, H, W]`` pixels → ``[B, K, C, (F − 1)/4 + 1, H/8, W/8]``, normalised
    per channel by the VAE config's ``latents_mean``/``latents_std``; a frame count the VAE cannot
    take is refused by name."""
    from diffalign.families import FamilyError

    if tiny_family.media != "video":
        pytest.skip("images: test_images_encode_and_decode")
    pixels = torch.rand(1, K, 3, 5, 32, 32) * 2 - 1
    latents = tiny_family.encode_images(pixels, generator=torch.Generator().manual_seed(1))
    # Wan 2.1 and A14B: 16 channels, 8x; TI2V-5B: 48 channels, 16x (its tiny normalisation is ours).
    c, side, first = (48, 2, (-0.2, 0.5)) if tiny_kind == "wan22_ti2v" else (16, 4, (-0.7571, 2.8184))
    assert latents.shape == (1, K, c, 2, side, side)
    vae = tiny_family.pipe.vae
    raw = vae.encode(pixels.flatten(0, 1)).latent_dist.sample(torch.Generator().manual_seed(1))
    mean = torch.tensor(vae.config.latents_mean).view(1, c, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, c, 1, 1, 1)
    assert (mean.flatten()[0], std.flatten()[0]) == pytest.approx(first)
    torch.testing.assert_close(latents.flatten(0, 1), (raw - mean) / std)
    assert tiny_family.decode(latents).shape == pixels.shape
    with pytest.raises(FamilyError, match="6 frames cannot be encoded.*5 or 9"):
        tiny_family.encode_images(torch.zeros(1, 1, 3, 6, 32, 32))


def test_one_generator_per_group_is_layout_independent(tiny_family):
    """A group's noise and time depend only on its own generator, not on the batch around it."""
    latents = torch.zeros(3, K, *_latent_shape(tiny_family))

    def gens(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    noise, t = tiny_family.sample_noise_and_time(latents, generator=gens(10, 11, 12))
    alone_noise, alone_t = tiny_family.sample_noise_and_time(latents[1:2], generator=gens(11))
    torch.testing.assert_close(noise[1:2], alone_noise)
    torch.testing.assert_close(t[1:2], alone_t)
    assert not torch.equal(noise[0], noise[1])
    mean, std = torch.zeros(3, K, *_latent_shape(tiny_family)), torch.ones(3, K, *_latent_shape(tiny_family))
    sampled = tiny_family.latents_from_posterior(mean, std, gens(10, 11, 12))
    torch.testing.assert_close(sampled[2:], tiny_family.latents_from_posterior(mean[2:], std[2:], gens(12)))


def test_a_bf16_reference_copy_gets_bf16_inputs(tiny_family):
    """Full fine-tuning keeps fp32 weights and a frozen bf16 reference copy: inputs follow the
    module actually called (reading the policy's dtype would feed the copy fp32 and fail)."""
    from diffalign.families.reference import Reference

    latents, noise, t = _group(tiny_family)
    cond = tiny_family.encode_prompts(["a red cat", "a dog", "a tree"], group_size=K)
    reference = Reference(tiny_family.denoiser, lora=False, dtype=torch.bfloat16)
    with reference.active() as module:
        ref_err = tiny_family.denoising_error(module, latents, cond, noise, t)
        exact = tiny_family.denoising_error(tiny_family.denoiser, latents, cond, noise, t)
    assert ref_err.dtype == torch.float32 and torch.isfinite(ref_err).all()
    torch.testing.assert_close(ref_err, exact, rtol=0.1, atol=1e-3)  # bf16 rounding only


def test_every_family_file_stays_small():
    """Each file in ``diffalign/families`` does one job (loading, latents, conditioning, noise, one
    family): none grows past 250 lines."""
    from pathlib import Path

    import diffalign.families

    for path in Path(diffalign.families.__file__).parent.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 250, path.name
