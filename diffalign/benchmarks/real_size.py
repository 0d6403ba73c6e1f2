"""Real-size architectures with random weights, for the GPU benchmarks (nothing is downloaded).

The configs are the published ``config.json`` files of
``stable-diffusion-v1-5/stable-diffusion-v1-5``, ``stabilityai/stable-diffusion-xl-base-1.0`` and
``stabilityai/stable-diffusion-3-medium-diffusers`` (UNet/transformer, VAE, text encoders),
written out here. Speed and memory depend on the architecture, not on the weights' values, so a
randomly initialised model measures what the released one would. The tokenizers are the tiny
ones of :mod:`diffalign.testing` (their ids fit every vocabulary; the sequence length, 77 for
CLIP, is the real one).

Parameter counts of these configs are checked against the published ones in the tests
(SD1.5 UNet 0.86 B, SDXL UNet 2.57 B, SD3-Medium MMDiT 2.0 B).
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_KIND = {"sd": "sd15", "sdxl": "sdxl", "sd3": "sd3"}
"""Family name → the :mod:`diffalign.testing` pipeline of that family (its scheduler settings)."""
DEFAULT_RESOLUTION = {"sd": 512, "sdxl": 1024, "sd3": 1024}
MINI_RESOLUTION = 256

# Dense (no sparsity) peak TFLOP/s by GPU name fragment, from the vendors' data sheets (SXM parts).
_PEAK_TFLOPS = {"H100": {"bf16": 989.4, "fp16": 989.4, "no": 494.7}, "H200": {"bf16": 989.4, "fp16": 989.4, "no": 494.7},
                "A100": {"bf16": 312.0, "fp16": 312.0, "no": 156.0}}


def gpu_peak_tflops(mixed_precision: str) -> float | None:
    """The current GPU's dense peak for the training precision (TF32 for ``"no"``), if known."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, table in _PEAK_TFLOPS.items():
        if key in name:
            return table[mixed_precision]
    return None


SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8, cross_attention_dim=768,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
)
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
)
SD3_MEDIUM_TRANSFORMER = dict(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
    pos_embed_max_size=192,
)
_VAE = dict(
    in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
)
VAE = {
    "sd": dict(_VAE, latent_channels=4, sample_size=512, scaling_factor=0.18215),
    "sdxl": dict(_VAE, latent_channels=4, sample_size=1024, scaling_factor=0.13025, force_upcast=True),
    "sd3": dict(_VAE, latent_channels=16, sample_size=1024, scaling_factor=1.5305, shift_factor=0.0609,
                use_quant_conv=False, use_post_quant_conv=False),
}
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
CLIP_BIGG = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                 num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", dense_act_fn="gelu_new",
              is_gated_act=True, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def _scaled_sdxl(factor: int) -> dict:
    """SDXL with every width divided by ``factor`` and everything else as published (depths,
    transformer layers per block, head counts, the VAE's ×8 downsampling, both text encoders'
    layer counts), so the parts keep roughly their real shares of compute and memory."""
    width = lambda n: n // factor  # noqa: E731
    unet = dict(SDXL_UNET, block_out_channels=tuple(map(width, SDXL_UNET["block_out_channels"])),
                cross_attention_dim=width(2048), addition_time_embed_dim=width(256),
                projection_class_embeddings_input_dim=6 * width(256) + width(1280), norm_num_groups=8)
    vae = dict(VAE["sdxl"], block_out_channels=tuple(map(width, _VAE["block_out_channels"])), norm_num_groups=8)
    clip_l = dict(CLIP_L, hidden_size=width(768), intermediate_size=width(3072), projection_dim=width(768))
    clip_g = dict(CLIP_BIGG, hidden_size=width(1280), intermediate_size=width(5120), projection_dim=width(1280))
    return {"unet": unet, "vae": vae, "text_encoder": clip_l, "text_encoder_2": clip_g}


MINI_FACTOR = 8
"""``--size mini``: SDXL at 1/8 of its widths (about 1/64 of its parameters), for CPU benchmarks
whose parts keep SDXL's proportions (the unit tests' tiny SDXL has a ×2 VAE and 2-layer text
encoders, so its VAE and text encoders cost almost nothing next to its UNet)."""


def denoiser(family: str) -> torch.nn.Module:
    """The UNet or transformer of ``family`` (``"sd"``, ``"sdxl"``, ``"sd3"``), randomly initialised
    on the current default device (use ``torch.device("meta")`` to only count parameters)."""
    from diffusers import SD3Transformer2DModel, UNet2DConditionModel

    if family == "sd3":
        return SD3Transformer2DModel(**SD3_MEDIUM_TRANSFORMER)
    if family not in ("sd", "sdxl"):
        raise ValueError(f"unknown family {family!r}; choose sd, sdxl or sd3")
    return UNet2DConditionModel(**(SD15_UNET if family == "sd" else SDXL_UNET))


def _clip(config: dict, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from diffalign.testing import clip_vocab_and_merges

    vocab, _ = clip_vocab_and_merges()
    ids = dict(bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(CLIPTextConfig(**config, **ids)).eval()


def components(family: str, use_t5: bool = False, size: str = "real") -> tuple[type, dict]:
    """``(pipeline class, components)`` of a real-size pipeline with random weights.

    Args:
        use_t5: SD3 only: add the 4.7 B-parameter T5-XXL encoder (left out by default, as many
            users do; the transformer is the same either way).
        size: ``"real"``, or ``"mini"`` (SDXL only: :data:`MINI_FACTOR`).
    """
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel

    from diffalign.testing import scheduler_for, tiny_clip_tokenizer, tiny_t5_tokenizer

    scheduler = scheduler_for(TINY_KIND[family])
    if size == "mini":
        if family != "sdxl":
            raise ValueError(f"--size mini exists for sdxl only, not {family!r}")
        mini = _scaled_sdxl(MINI_FACTOR)
        return diffusers.StableDiffusionXLPipeline, dict(
            vae=AutoencoderKL(**mini["vae"]).eval(), scheduler=scheduler, tokenizer=tiny_clip_tokenizer(),
            unet=UNet2DConditionModel(**mini["unet"]), text_encoder=_clip(mini["text_encoder"], False),
            text_encoder_2=_clip(mini["text_encoder_2"], True), tokenizer_2=tiny_clip_tokenizer())
    common = dict(vae=AutoencoderKL(**VAE[family]).eval(), scheduler=scheduler, tokenizer=tiny_clip_tokenizer())
    model = denoiser(family)
    if family == "sd":
        return diffusers.StableDiffusionPipeline, dict(
            common, unet=model, text_encoder=_clip(CLIP_L, False), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
    if family == "sdxl":
        return diffusers.StableDiffusionXLPipeline, dict(
            common, unet=model, text_encoder=_clip(CLIP_L, False), text_encoder_2=_clip(CLIP_BIGG, True),
            tokenizer_2=tiny_clip_tokenizer())
    return diffusers.StableDiffusion3Pipeline, dict(
        common, transformer=model, text_encoder=_clip(CLIP_L, True), text_encoder_2=_clip(CLIP_BIGG, True),
        tokenizer_2=tiny_clip_tokenizer(),
        text_encoder_3=T5EncoderModel(T5Config(**T5_XXL)).eval() if use_t5 else None,
        tokenizer_3=tiny_t5_tokenizer() if use_t5 else None)


def save_real_size_pipeline(family: str, path: str | Path, use_t5: bool = False, seed: int = 0,
                            size: str = "real") -> Path:
    """Build the real-size pipeline (on the GPU when there is one: initialising 2.6 B parameters on
    CPU takes minutes) and save it in bf16 safetensors; training loads fp32 masters from it."""
    from diffalign.benchmarks.measure import release_memory

    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        cls, parts = components(family, use_t5=use_t5, size=size)
    # bf16 halves the write; the CPU mini model stays fp32 (its benchmark trains in fp32).
    pipe = cls(**parts).to(torch.bfloat16 if size == "real" else torch.float32)
    pipe.save_pretrained(str(path), safe_serialization=True)
    del pipe, parts
    release_memory()
    return Path(path)
