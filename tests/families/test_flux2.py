"""What only FLUX.2 [klein] has (diffalign.families.flux2): patchified, batch-normalised latents,
4-D positions, three Qwen3 layers as text, a shift that depends on the step count."""

import pytest
import torch

from diffalign.families import load
from diffalign.families.flux2 import patchify, positions, unpatchify
from diffalign.solver import initial_noise
from test_solver import eta_zero_images


@pytest.fixture(scope="module")
def family(tiny_path):
    return load(tiny_path("flux2"))


def test_patchify_and_positions_are_the_pipelines(family):
    pipe = type(family.pipe)
    x = torch.randn(2, 4, 6, 8)
    torch.testing.assert_close(patchify(x), pipe._patchify_latents(x), rtol=0, atol=0)
    torch.testing.assert_close(unpatchify(patchify(x)), x, rtol=0, atol=0)
    image, text = positions(2, 3, 4, 5, "cpu", torch.float32)
    torch.testing.assert_close(image, pipe._prepare_latent_ids(torch.zeros(2, 16, 3, 4)).float())
    torch.testing.assert_close(text, pipe._prepare_text_ids(torch.zeros(2, 5, 48)).float())


def test_the_latent_is_the_pipelines_normalised_patchified_posterior(family):
    """The posterior mean equals what the pipeline makes of an image (its ``_encode_vae_image``: the
    mode, patchified, minus the batch-norm mean, over its std), for the tiny VAE's spread statistics."""
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    mean, std = family.encode_posterior(pixels)
    torch.testing.assert_close(mean, family.pipe._encode_vae_image(pixels, generator=None), rtol=1e-5, atol=1e-5)
    bn_std = torch.sqrt(family.pipe.vae.bn.running_var + family.pipe.vae.config.batch_norm_eps).view(-1, 1, 1)
    raw_std = family.pipe.vae.encode(pixels).latent_dist.std
    torch.testing.assert_close(std, patchify(raw_std) / bn_std)
    torch.testing.assert_close(family.decode(mean[:, None])[:, 0], family.pipe.vae.decode(unpatchify(
        mean * bn_std + family.pipe.vae.bn.running_mean.view(-1, 1, 1))).sample.clamp(-1, 1))


def test_the_shift_depends_on_the_step_count(family):
    four, eight = family.sampling_times(4, (8, 8)), family.sampling_times(8, (8, 8))
    assert four.shape == (5,) and eight.shape == (9,)
    assert not torch.allclose(four[1], eight[2])  # the same unshifted σ = 0.75, shifted by another μ


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_eta_zero_reproduces_the_flux2_klein_pipeline(family, guidance):
    """The same start noise, prompts, steps and (true) guidance: ``Flux2KleinPipeline``'s image at
    two sizes (the shift differs), through our sampler."""
    prompts, steps = ["a red cat", "a blue dog with a hat"], 4
    for height, width in ((32, 32), (64, 32)):
        noise = initial_noise(family, 2, 1, (height, width), generator=torch.Generator().manual_seed(3))
        expected = family.pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=guidance, height=height,
                               width=width, latents=noise[:, 0].clone(), output_type="pt").images
        images, _ = eta_zero_images(family, prompts, noise, steps, guidance)
        torch.testing.assert_close(images, expected.float(), rtol=1e-4, atol=1e-4)


def test_a_step_distilled_klein_ignores_guidance_as_its_pipeline_does(tiny_path, tmp_path):
    """``is_distilled``: ``Flux2KleinPipeline`` ignores ``guidance_scale`` (one forward a step), and
    our sampler does too, with a warning; the base [klein] keeps true CFG (the test above)."""
    from diffusers import Flux2KleinPipeline

    folder = tiny_path("flux2")
    pipe = Flux2KleinPipeline.from_pretrained(folder)
    pipe.register_to_config(is_distilled=True)
    pipe.save_pretrained(tmp_path / "distilled")
    family = load(tmp_path / "distilled")
    assert family.takes_guidance is False and load(folder).takes_guidance is True
    prompts, steps = ["a red cat", "a blue dog with a hat"], 4
    noise = initial_noise(family, 2, 1, (32, 32), generator=torch.Generator().manual_seed(3))
    expected = family.pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=4.0, height=32, width=32,
                           latents=noise[:, 0].clone(), output_type="pt").images
    with pytest.warns(UserWarning, match="guidance 4.0 is ignored: this flux2 checkpoint is step-distilled"):
        images, traj = eta_zero_images(family, prompts, noise, steps, guidance=4.0)
    _, plain = eta_zero_images(family, prompts, noise, steps, guidance=1.0)
    assert torch.equal(traj.final, plain.final)
    torch.testing.assert_close(images, expected.float(), rtol=1e-4, atol=1e-4)
