"""What only FLUX has (diffalign.families.flux): packed 2×2 latent tokens, the size-dependent
shift of its sampler, training on the unshifted sigmas, and the guidance scale as an input."""

import math

import pytest
import torch

from diffalign.families import FamilyError, load


def test_packing_is_the_pipelines_and_unpacks_back():
    from diffusers import FluxPipeline

    from diffalign.families.flux import image_ids
    from diffalign.families.packed import pack, unpack

    x = torch.randn(3, 4, 6, 8)
    tokens = pack(x)
    torch.testing.assert_close(tokens, FluxPipeline._pack_latents(x, 3, 4, 6, 8), rtol=0, atol=0)
    assert tokens.shape == (3, 12, 16)
    torch.testing.assert_close(unpack(tokens, 6, 8), x, rtol=0, atol=0)
    # Token (row 1, column 2) holds channel 0's patch x[0, 0, 2:4, 4:6] first.
    assert tokens[0, 1 * 4 + 2, :4].tolist() == x[0, 0, 2:4, 4:6].flatten().tolist()
    torch.testing.assert_close(image_ids(6, 8, "cpu", torch.float32),
                               FluxPipeline._prepare_latent_image_ids(1, 3, 4, "cpu", torch.float32))


def test_the_sampler_shift_grows_with_the_image(tiny_path):
    """σ' = e^μ / (e^μ + 1/σ − 1) on σ = linspace(1, 1/S, S), then 0, with μ linear in the
    number of packed tokens: 0.5 at 256, 1.15 at 4096 (FLUX.1-dev's scheduler config)."""
    family = load(tiny_path("flux"))
    for h, w in ((4, 4), (64, 64), (128, 64)):
        tokens = (h // 2) * (w // 2)
        mu = 0.5 + (1.15 - 0.5) * (tokens - 256) / (4096 - 256)
        sigmas = [1 - i * (1 - 1 / 4) / 3 for i in range(4)]
        expected = [math.exp(mu) / (math.exp(mu) + 1 / s - 1) for s in sigmas] + [0.0]
        torch.testing.assert_close(family.sampling_times(4, (h, w)), torch.tensor(expected), rtol=1e-5, atol=1e-6)
    assert family.sampling_times(4, (128, 64))[1] > family.sampling_times(4, (4, 4))[1]  # larger: noisier longer
    with pytest.raises(FamilyError, match="depends on the image size"):
        family.sampling_times(4)


def test_training_draws_from_the_unshifted_sigmas(tiny_path):
    """diffusers' FLUX scripts train on the scheduler's stored sigmas, unshifted when the shift is
    dynamic: 1000 of them, i/1000 for i = 1 … 1000."""
    family = load(tiny_path("flux"))
    torch.testing.assert_close(family.train_sigmas, torch.arange(1000, 0, -1).float() / 1000)


def test_the_embedded_guidance_reaches_the_transformer(tiny_path):
    family = load(tiny_path("flux"))
    other = load(tiny_path("flux"), embedded_guidance=7.0)
    assert family.embedded_guidance == 3.5 and other.embedded_guidance == 7.0
    x = torch.randn(1, 2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    cond = family.encode_prompts(["a red cat"], group_size=2)
    t = torch.tensor([0.5])
    with torch.no_grad():
        a = family.predict(family.denoiser, x, t, cond)
        b = other.predict(other.denoiser, x, t, cond)
    assert a.shape == x.shape and (a - b).abs().max() > 1e-4


def _meta_flux(**sizes):
    """A FLUX.1-shaped transformer (one double and one single block) on the meta device: shapes, no memory."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        return FluxTransformer2DModel(num_layers=1, num_single_layers=1, guidance_embeds=True, **sizes)


def test_kohya_keys_load_back_through_diffusers_flux_converter():
    """The kohya FLUX file, read by diffusers' own kohya-to-diffusers converter (which assumes
    FLUX.1's width, 3072, for the single blocks: hence the full-width meta transformer), gives back
    every adapter's update ``(alpha / r)·B·A`` exactly, the fused q/k/v and q/k/v/MLP layers and the
    final norm's swapped (shift, scale) rows included."""
    from types import SimpleNamespace

    from diffusers import FluxPipeline

    from diffalign.families.flux import FluxFamily

    model = _meta_flux()
    rank, alpha = 2, 6.0
    gen = torch.Generator().manual_seed(0)
    targets = ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k", "transformer_blocks.0.attn.to_v",
               "transformer_blocks.0.attn.add_k_proj", "transformer_blocks.0.attn.to_out.0",
               "single_transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.attn.to_v",
               "single_transformer_blocks.0.proj_out", "norm_out.linear"]
    peft_state = {}
    for name in targets:
        layer = model.get_submodule(name)
        peft_state[f"{name}.lora_A.weight"] = torch.randn(rank, layer.in_features, generator=gen)
        peft_state[f"{name}.lora_B.weight"] = torch.randn(layer.out_features, rank, generator=gen)
    kohya = FluxFamily.kohya_state_dict(SimpleNamespace(denoiser=model), peft_state, alpha)
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in kohya
    assert float(kohya["lora_unet_double_blocks_0_img_attn_qkv.alpha"]) == 3 * alpha  # three parts of rank 2
    assert kohya["lora_unet_single_blocks_0_linear1.lora_up.weight"].shape == (3 * 3072 + 4 * 3072, 2 * rank)
    loaded = FluxPipeline.lora_state_dict(dict(kohya))
    # diffusers reads the final norm without the transformer prefix and without its alpha (its
    # converter's "TODO: alphas"): there it checks the (shift, scale) swap of the rows alone.
    final = loaded["norm_out.linear.lora_B.weight"] @ loaded["norm_out.linear.lora_A.weight"]
    torch.testing.assert_close(final, peft_state["norm_out.linear.lora_B.weight"] @ peft_state["norm_out.linear.lora_A.weight"])
    for name in targets[:-1]:
        expected = (alpha / rank) * peft_state[f"{name}.lora_B.weight"] @ peft_state[f"{name}.lora_A.weight"]
        got = loaded[f"transformer.{name}.lora_B.weight"] @ loaded[f"transformer.{name}.lora_A.weight"]
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=name)
    # Parts without an adapter in a fused layer come back as zero updates.
    for name in ("transformer_blocks.0.attn.add_q_proj", "single_transformer_blocks.0.attn.to_k"):
        zero = loaded[f"transformer.{name}.lora_B.weight"] @ loaded[f"transformer.{name}.lora_A.weight"]
        assert zero.abs().max() == 0


def test_kohya_refuses_an_adapter_it_has_no_key_for():
    from types import SimpleNamespace

    from diffalign.families.flux import FluxFamily

    model = _meta_flux()
    state = {"transformer_blocks.0.attn.norm_q.lora_A.weight": torch.zeros(2, 128),
             "transformer_blocks.0.attn.norm_q.lora_B.weight": torch.zeros(128, 2)}
    with pytest.raises(FamilyError, match="no FLUX key for the adapted layers.*norm_q"):
        FluxFamily.kohya_state_dict(SimpleNamespace(denoiser=model), state, 4.0)
