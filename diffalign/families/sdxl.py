"""SDXL: the SD UNet maths plus two CLIP text encoders (penultimate hidden states concatenated),
the pooled embedding of the second, and six micro-conditioning "time ids" per image
(original size, crop top-left, target size; Podell et al., 2023, §2.2).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffalign.families.base import Conditioning, FamilyError
from diffalign.families.builds import CLIP_BIGG, CLIP_L, SD_VAE, random_clip
from diffalign.families.sd import SDFamily, tiny_unet

SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
)
"""``stable-diffusion-xl-base-1.0``'s UNet config (2.57 B parameters)."""
SDXL_VAE = dict(SD_VAE, latent_channels=4, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
MINI_FACTOR = 8
"""``size="mini"``: SDXL at 1/8 of its widths (about 1/64 of its parameters), for CPU benchmarks
whose parts keep SDXL's proportions (the tiny SDXL has a ×2 VAE and 2-layer text encoders, so its
VAE and text encoders cost almost nothing next to its UNet)."""


class SDXLFamily(SDFamily):
    """SDXL-style pipelines (``StableDiffusionXLPipeline``)."""

    name = "sdxl"
    pipeline_class = "StableDiffusionXLPipeline"
    text_components = ("text_encoder", "text_encoder_2")
    tiny_kinds = ("sdxl",)
    real_sizes = ("real", "mini")
    real_size_resolution = 1024

    @property
    def default_size(self) -> tuple[int, int]:
        """Training resolution the UNet was built for (1024² for SDXL-base)."""
        side = self.denoiser.config.sample_size * self.vae_scale_factor
        return side, side

    def _encode_text(self, prompts: list[str]) -> tuple[Tensor, Tensor | None]:
        self._require("text_encoder_2", "encode_prompts")
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompts, device=self.pipe.text_encoder_2.device, num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
        return embeds, pooled

    def image_info(self, batch: dict, size: tuple[int, int]) -> dict:
        """The sizes and crops the batch recorded for each image, with the training size as target."""
        b, k = batch["original_size"].shape[:2]
        return {
            "original_size": batch["original_size"],
            "crop_top_left": batch["crop_top_left"],
            "target_size": torch.tensor(size).expand(b, k, 2),
        }

    def _with_image_info(self, cond: Conditioning, image_info: dict[str, Tensor] | None) -> Conditioning:
        """Attach ``time_ids [B, K, 6]`` = (original h, w, crop top, left, target h, w).

        ``image_info`` may give ``original_size``, ``crop_top_left`` and ``target_size`` as
        ``[B, K, 2]``; missing ones default to the UNet's native size and no crop, as the
        SDXL pipeline does at inference.
        """
        info = dict(image_info or {})
        b, k = cond.group_shape
        device = cond.prompt_embeds.device

        def part(key: str, default: tuple[int, int]) -> Tensor:
            value = info.pop(key, None)
            if value is None:
                return torch.tensor(default, dtype=torch.float32, device=device).expand(b, k, 2)
            value = torch.as_tensor(value, dtype=torch.float32, device=device)
            if value.shape != (b, k, 2):
                raise ValueError(f"image_info[{key!r}] must be [B, K, 2] = [{b}, {k}, 2], got {list(value.shape)}")
            return value

        target = part("target_size", self.default_size)
        original = part("original_size", tuple(int(v) for v in target[0, 0]))
        crop = part("crop_top_left", (0, 0))
        if info:
            raise ValueError(f"unknown image_info keys {sorted(info)}; expected original_size, crop_top_left, target_size")
        cond.time_ids = torch.cat([original, crop, target], dim=-1)
        return cond

    def _added_cond(self, cond: Conditioning, dtype: torch.dtype) -> dict:
        if cond.pooled is None or cond.time_ids is None:
            raise FamilyError("SDXL conditioning needs pooled embeddings and time ids; build it with encode_prompts")
        return {"text_embeds": cond.pooled.to(dtype), "time_ids": cond.time_ids.to(dtype)}

    # ----------------------------------------------------------------------------- builds
    @classmethod
    def _make_tiny_scheduler(cls, kind: str):
        import diffusers

        return diffusers.EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
            prediction_type="epsilon", timestep_spacing="leading", steps_offset=1,
        )

    @classmethod
    def tiny_components(cls, kind: str, seed: int = 0, with_t5: bool = True) -> dict:
        from diffalign.families.tiny_parts import tiny_clip_text_encoder, tiny_clip_tokenizer, tiny_vae

        scheduler = cls.tiny_scheduler(kind)
        # The UNet's cross-attention width is the two encoders' hidden sizes concatenated (16 + 16);
        # its pooled input is text_encoder_2's projection (32), after 6 time ids × 8.
        text_time = dict(addition_embed_type="text_time", addition_time_embed_dim=8,
                         projection_class_embeddings_input_dim=6 * 8 + 32, attention_head_dim=(2, 4),
                         use_linear_projection=True)
        return dict(
            unet=tiny_unet(seed=seed, **text_time), vae=tiny_vae(seed=seed),
            scheduler=scheduler, text_encoder=tiny_clip_text_encoder(hidden=16, seed=seed),
            text_encoder_2=tiny_clip_text_encoder(hidden=16, projection=32, seed=seed + 1),
            tokenizer=tiny_clip_tokenizer(), tokenizer_2=tiny_clip_tokenizer(),
        )

    @classmethod
    def real_size_denoiser(cls) -> torch.nn.Module:
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel(**SDXL_UNET)

    @classmethod
    def real_size_components(cls, use_t5: bool = False, size: str = "real") -> dict:
        from diffusers import AutoencoderKL, UNet2DConditionModel

        from diffalign.families.tiny_parts import tiny_clip_tokenizer

        scheduler = cls.tiny_scheduler(cls.tiny_kinds[0])
        if size == "mini":
            mini = _scaled(MINI_FACTOR)
            return dict(
                vae=AutoencoderKL(**mini["vae"]).eval(), scheduler=scheduler, tokenizer=tiny_clip_tokenizer(),
                unet=UNet2DConditionModel(**mini["unet"]), text_encoder=random_clip(mini["text_encoder"], False),
                text_encoder_2=random_clip(mini["text_encoder_2"], True), tokenizer_2=tiny_clip_tokenizer())
        common = dict(vae=AutoencoderKL(**SDXL_VAE).eval(), scheduler=scheduler, tokenizer=tiny_clip_tokenizer())
        return dict(common, unet=cls.real_size_denoiser(), text_encoder=random_clip(CLIP_L, False),
                    text_encoder_2=random_clip(CLIP_BIGG, True), tokenizer_2=tiny_clip_tokenizer())


def _scaled(factor: int) -> dict:
    """SDXL with every width divided by ``factor`` and everything else as published (depths,
    transformer layers per block, head counts, the VAE's ×8 downsampling, both text encoders'
    layer counts), so the parts keep roughly their real shares of compute and memory."""
    width = lambda n: n // factor  # noqa: E731
    unet = dict(SDXL_UNET, block_out_channels=tuple(map(width, SDXL_UNET["block_out_channels"])),
                cross_attention_dim=width(2048), addition_time_embed_dim=width(256),
                projection_class_embeddings_input_dim=6 * width(256) + width(1280), norm_num_groups=8)
    vae = dict(SDXL_VAE, block_out_channels=tuple(map(width, SD_VAE["block_out_channels"])), norm_num_groups=8)
    clip_l = dict(CLIP_L, hidden_size=width(768), intermediate_size=width(3072), projection_dim=width(768))
    clip_g = dict(CLIP_BIGG, hidden_size=width(1280), intermediate_size=width(5120), projection_dim=width(1280))
    return {"unet": unet, "vae": vae, "text_encoder": clip_l, "text_encoder_2": clip_g}
