"""Stable Diffusion 3: an MM-DiT (``SD3Transformer2DModel``) trained by rectified flow
(Esser et al., 2024). Two CLIP encoders plus an optional T5; VAE latents are shifted then scaled.

The flow maths is :class:`~diffalign.families.flow.FlowMatching`'s; σ is drawn as in diffusers'
SD3 scripts: ``u`` logit-normal(0, 1) by default, then the scheduler's shifted ``sigmas[floor(u·N)]``.
"""

from __future__ import annotations

from torch import Tensor

from diffalign.families.base import Conditioning, ModelFamily
from diffalign.families.flow import FlowMatching


class SD3Family(FlowMatching, ModelFamily):
    """SD3-style pipelines (``StableDiffusion3Pipeline``)."""

    name = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"
    denoiser_name = "transformer"
    repeated_blocks = ("JointTransformerBlock",)  # diffusers' SD3 transformer names none
    text_components = ("text_encoder", "text_encoder_2", "text_encoder_3")
    default_time_sampling = "logit_normal"

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
