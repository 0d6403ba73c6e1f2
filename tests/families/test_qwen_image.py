"""What only Qwen-Image has (diffalign.families.qwen_image): prompts of their own lengths under a
mask, padded and rebuilt; the one-frame per-channel VAE; true guidance rescaled per token."""

import pytest
import torch

from diffalign.families import load
from diffalign.families.packed import pack
from diffalign.solver import initial_noise
from test_solver import eta_zero_images


@pytest.fixture(scope="module")
def family(tiny_path):
    return load(tiny_path("qwen_image"))


def test_prompts_are_zero_padded_and_their_mask_is_the_pipelines(family):
    """The pipeline's own embeddings (padded to the batch's longest prompt, with its mask) are the
    first tokens of ours; the rest are zeros, and the mask rebuilt from them is the pipeline's."""
    prompts = ["a cat", "a much longer prompt about a dog in the rain"]
    embeds, mask = family.pipe.encode_prompt(prompt=prompts, device="cpu", max_sequence_length=512)
    ours = family.encode_prompts(prompts).prompt_embeds[:, 0]
    assert ours.shape == (2, 512, 16)
    length = embeds.shape[1]
    torch.testing.assert_close(ours[:, :length], embeds * mask[..., None])
    assert ours[:, length:].abs().max() == 0
    assert torch.equal(ours.ne(0).any(-1)[:, :length].long(), mask)
    assert mask[0].sum() < mask[1].sum()  # the lengths differ: the mask matters


def test_guidance_is_rescaled_to_the_conditional_norm_per_token(family):
    """By hand on the packed tokens: ``g = u + w(c − u)``, then ``g · |c| / |g|`` per token."""
    gen = torch.Generator().manual_seed(0)
    c, u = torch.randn(2, 1, 4, 4, 6, generator=gen), torch.randn(2, 1, 4, 4, 6, generator=gen)
    out = family.combine_guidance(c, u, 3.0)
    pc, pu, po = pack(c[:, 0]), pack(u[:, 0]), pack(out[:, 0])
    g = pu + 3.0 * (pc - pu)
    torch.testing.assert_close(po, g * pc.norm(dim=-1, keepdim=True) / g.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(po.norm(dim=-1), pc.norm(dim=-1))


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_eta_zero_reproduces_the_qwen_image_pipeline(family, guidance):
    """The same start noise (unpacked), prompts of different lengths, steps and true guidance with
    the empty negative prompt: our sampler gives ``QwenImagePipeline``'s image at two sizes (its
    shift depends on the size), ``true_cfg_scale`` rescaling included."""
    prompts, steps = ["a red cat", "a blue dog with a hat"], 4
    for height, width in ((32, 32), (64, 32)):
        noise = initial_noise(family, 2, 1, (height, width), generator=torch.Generator().manual_seed(3))
        cfg = dict(negative_prompt=[""] * 2) if guidance > 1 else {}
        expected = family.pipe(prompt=prompts, num_inference_steps=steps, true_cfg_scale=guidance, height=height,
                               width=width, latents=pack(noise[:, 0].clone()), output_type="pt", **cfg).images
        images, _ = eta_zero_images(family, prompts, noise, steps, guidance)
        torch.testing.assert_close(images, expected.float(), rtol=1e-4, atol=1e-4)
