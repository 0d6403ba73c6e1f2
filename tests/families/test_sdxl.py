"""SDXL specifics: six micro-conditioning time ids per image and the pooled text embedding."""

import torch

from diffalign.families import load


def _capture_unet_kwargs(family):
    seen = {}

    def hook(module, args, kwargs):
        seen.update(kwargs)

    return seen, family.denoiser.register_forward_pre_hook(hook, with_kwargs=True)


def test_six_time_ids_and_pooled_per_image(tiny_path):
    family = load(tiny_path("sdxl"))
    b, k = 2, 3
    latents = torch.randn(b, k, 4, 8, 8)
    noise, t = family.sample_noise_and_time(latents)
    info = {
        "original_size": torch.tensor([[[40, 48]] * k, [[64, 32]] * k]),
        "crop_top_left": torch.tensor([[[4, 0], [0, 8], [2, 2]]] * b),
    }
    cond = family.encode_prompts(["a cat", "a dog"], group_size=k, image_info=info)
    seen, handle = _capture_unet_kwargs(family)
    try:
        family.denoising_error(family.denoiser, latents, cond, noise, t)
    finally:
        handle.remove()
    added = seen["added_cond_kwargs"]
    assert added["time_ids"].shape == (b * k, 6)
    assert added["text_embeds"].shape == (b * k, family.pipe.text_encoder_2.config.projection_dim)
    # Row order is group-major: image (1, 2) is flat row 5. Target size defaults to the UNet's native 32².
    assert added["time_ids"][5].tolist() == [64, 32, 2, 2, 32, 32]
    assert added["time_ids"][1].tolist() == [40, 48, 0, 8, 32, 32]


def test_default_time_ids_match_the_pipeline(tiny_path):
    family = load(tiny_path("sdxl"))
    cond = family.encode_prompts(["a cat"])
    # What StableDiffusionXLPipeline uses at inference for a 32×32 image, no crop.
    expected = family.pipe._get_add_time_ids(
        (32, 32), (0, 0), (32, 32), dtype=torch.float32,
        text_encoder_projection_dim=family.pipe.text_encoder_2.config.projection_dim,
    )
    torch.testing.assert_close(cond.time_ids[0], expected)


def test_time_ids_change_the_prediction(tiny_path):
    family = load(tiny_path("sdxl"))
    latents = torch.randn(1, 2, 4, 8, 8)
    latents[:, 1] = latents[:, 0]
    noise, t = family.sample_noise_and_time(latents)
    info = {"crop_top_left": torch.tensor([[[0, 0], [16, 16]]])}
    cond = family.encode_prompts(["a cat"], group_size=2, image_info=info)
    with torch.no_grad():
        pred = family.predict(family.denoiser, family.add_noise(latents, noise, t), t, cond)
    assert (pred[0, 0] - pred[0, 1]).abs().max() > 1e-5
