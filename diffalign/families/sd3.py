"""Stable Diffusion 3 and 3.5: an MM-DiT (``SD3Transformer2DModel``) trained by rectified flow
(Esser et al., 2024). Two CLIP encoders plus an optional T5; VAE latents are shifted then scaled.
SD3.5 is the same pipeline with two transformer changes, both read from its config and run by
diffusers' model, so nothing here branches on them: RMS-normalised queries and keys
(``qk_norm: "rms_norm"``, Medium and Large) and, in Medium's MMDiT-X, a second self-attention over
the image tokens alone in its first 13 blocks (``dual_attention_layers``; LoRA on ``to_q`` etc.
adapts both attentions). :meth:`architecture` names which one a checkpoint is.

The flow maths is :class:`~diffalign.families.flow.FlowMatching`'s; σ is drawn as in diffusers'
SD3 scripts: ``u`` logit-normal(0, 1) by default, then the scheduler's shifted ``sigmas[floor(u·N)]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffalign.families.base import Conditioning, ModelFamily
from diffalign.families.builds import CLIP_BIGG, CLIP_L, SD_VAE, T5_XXL, random_clip
from diffalign.families.flow import FlowMatching

SD3_MEDIUM_TRANSFORMER = dict(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
    pos_embed_max_size=192,
)
"""``stable-diffusion-3-medium-diffusers``' MMDiT config (2.0 B parameters)."""
SD3_VAE = dict(SD_VAE, latent_channels=16, sample_size=1024, scaling_factor=1.5305, shift_factor=0.0609,
               use_quant_conv=False, use_post_quant_conv=False)


class SD3Family(FlowMatching, ModelFamily):
    """SD3-style pipelines (``StableDiffusion3Pipeline``)."""

    name = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"
    denoiser_name = "transformer"
    repeated_blocks = ("JointTransformerBlock",)  # diffusers' SD3 transformer names none
    text_components = ("text_encoder", "text_encoder_2", "text_encoder_3")
    default_time_sampling = "logit_normal"
    tiny_kinds = ("sd3", "sd35")
    real_sizes = ("real",)
    real_size_resolution = 1024

    def __init__(self, pipe, path: str | None = None, *, use_t5: bool = True, max_sequence_length: int | None = None, **options):
        """
        Args:
            use_t5: ``False`` leaves the T5 encoder unloaded; its tokens are then zeros, as the
                SD3 pipeline does without ``text_encoder_3``.
            max_sequence_length: T5 tokens; ``None`` = 256, the SD3 pipeline's default.
            options: see :class:`~diffalign.families.base.ModelFamily`; ``loss_weighting`` may be
                ``"sigma_sqrt"`` or ``"cosmap"`` (``compute_loss_weighting_for_sd3``).
        """
        super().__init__(pipe, path, **options)
        self.use_t5 = use_t5
        self.max_sequence_length = max_sequence_length or 256
        self._init_flow()

    @classmethod
    def pixel_multiple(cls, path, revision: str | None = None) -> int:
        """The VAE's downsampling times the transformer's patch size: a latent side that the
        patches do not tile cannot be embedded (SD3-Medium: 8 × 2 = 16 pixels)."""
        from diffusers import SD3Transformer2DModel

        patch = SD3Transformer2DModel.load_config(str(path), subfolder="transformer", revision=revision)["patch_size"]
        return super().pixel_multiple(path, revision) * patch

    @classmethod
    def architecture(cls, path, revision: str | None = None) -> str | None:
        """``SD3.5 (MMDiT-X: …)`` or ``SD3.5 (QK RMS norm)`` from the transformer's config; ``None``
        for SD3 itself."""
        from diffusers import SD3Transformer2DModel

        config = SD3Transformer2DModel.load_config(str(path), subfolder="transformer", revision=revision)
        dual, qk = tuple(config.get("dual_attention_layers") or ()), config.get("qk_norm")
        if dual:
            return (f"SD3.5 (MMDiT-X: dual attention in {len(dual)} of {config['num_layers']} blocks, "
                    f"QK norm {qk or 'none'})")
        return f"SD3.5 (QK norm {qk})" if qk else None

    @classmethod
    def _skipped_components(cls, options: dict) -> dict:
        return {} if options.get("use_t5", True) else {"text_encoder_3": None, "tokenizer_3": None}

    def _extra_inputs(self, cond: Conditioning, dtype) -> dict:
        return {"pooled_projections": cond.pooled.to(dtype)}

    def _encode_text(self, prompts: list[str]) -> tuple[Tensor, Tensor | None]:
        self._require("text_encoder", "encode_prompts")
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=self.pipe.text_encoder.device,
            num_images_per_prompt=1, do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return embeds, pooled

    # ----------------------------------------------------------------------------- builds
    @classmethod
    def _make_tiny_scheduler(cls, kind: str):
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)

    @classmethod
    def tiny_components(cls, kind: str, seed: int = 0, with_t5: bool = True) -> dict:
        from diffalign.families.tiny_parts import tiny_clip_text_encoder, tiny_clip_tokenizer, tiny_t5_encoder, tiny_t5_tokenizer, tiny_vae

        scheduler = cls.tiny_scheduler(kind)
        return dict(
            transformer=tiny_transformer(seed=seed, mmdit_x=kind == "sd35"),
            vae=tiny_vae(shift_factor=0.0609, seed=seed), scheduler=scheduler,
            # CLIP hidden states (16 + 16) are padded to the T5 width (32); pooled = 16 + 16.
            text_encoder=tiny_clip_text_encoder(hidden=16, projection=16, seed=seed),
            text_encoder_2=tiny_clip_text_encoder(hidden=16, projection=16, seed=seed + 1),
            tokenizer=tiny_clip_tokenizer(), tokenizer_2=tiny_clip_tokenizer(),
            text_encoder_3=tiny_t5_encoder(seed=seed) if with_t5 else None,
            tokenizer_3=tiny_t5_tokenizer() if with_t5 else None,
        )

    @classmethod
    def real_size_denoiser(cls) -> torch.nn.Module:
        from diffusers import SD3Transformer2DModel

        return SD3Transformer2DModel(**SD3_MEDIUM_TRANSFORMER)

    @classmethod
    def real_size_components(cls, use_t5: bool = False, size: str = "real") -> dict:
        from diffusers import AutoencoderKL
        from transformers import T5Config, T5EncoderModel

        from diffalign.families.tiny_parts import tiny_clip_tokenizer, tiny_t5_tokenizer

        scheduler = cls.tiny_scheduler(cls.tiny_kinds[0])
        common = dict(vae=AutoencoderKL(**SD3_VAE).eval(), scheduler=scheduler, tokenizer=tiny_clip_tokenizer())
        return dict(
            common, transformer=cls.real_size_denoiser(), text_encoder=random_clip(CLIP_L, True),
            text_encoder_2=random_clip(CLIP_BIGG, True), tokenizer_2=tiny_clip_tokenizer(),
            text_encoder_3=T5EncoderModel(T5Config(**T5_XXL)).eval() if use_t5 else None,
            tokenizer_3=tiny_t5_tokenizer() if use_t5 else None)


def tiny_transformer(seed: int = 0, mmdit_x: bool = False) -> torch.nn.Module:
    """A 1-layer ``SD3Transformer2DModel`` over 4-channel latents, patch size 1 (joint dim 32);
    ``mmdit_x``: SD3.5 Medium's blocks instead, two of them, the first with the dual attention,
    both with RMS-normalised queries and keys."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    sd35 = dict(num_layers=2, dual_attention_layers=(0,), qk_norm="rms_norm") if mmdit_x else dict(num_layers=1)
    return SD3Transformer2DModel(
        sample_size=16, patch_size=1, in_channels=4, out_channels=4, attention_head_dim=8, num_attention_heads=4,
        joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=32, pos_embed_max_size=32, **sd35,
    )
