"""Stable Diffusion 3: an MM-DiT (``SD3Transformer2DModel``) trained by rectified flow
(Esser et al., 2024). Two CLIP encoders plus an optional T5; VAE latents are shifted then scaled.

Maths, with σ ∈ (0, 1] the noise level (our normalised time ``t`` is σ itself):
    x_σ = (1 − σ)·x0 + σ·ε,   target v = ε − x0,   transformer timestep = σ · N.
σ is drawn as in diffusers' SD3 scripts: ``u`` from ``compute_density_for_timestep_sampling``
(logit-normal(0, 1) by default), then the scheduler's shifted ``sigmas[floor(u·N)]``.
"""

from __future__ import annotations

from torch import Tensor

from diffalign.families.base import Conditioning, ModelFamily, input_dtype
from diffalign.families.noise import per_group


class SD3Family(ModelFamily):
    """SD3-style pipelines (``StableDiffusion3Pipeline``)."""

    name = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"
    denoiser_name = "transformer"
    repeated_blocks = ("JointTransformerBlock",)  # diffusers' SD3 transformer names none
    text_components = ("text_encoder", "text_encoder_2", "text_encoder_3")
    default_time_sampling = "logit_normal"
    loss_weightings = ("none", "sigma_sqrt", "cosmap")
    prediction_type = "flow"

    def __init__(self, pipe, path: str | None = None, *, use_t5: bool = True, max_sequence_length: int = 256, **options):
        """
        Args:
            use_t5: ``False`` leaves the T5 encoder unloaded; its tokens are then zeros, as the
                SD3 pipeline does without ``text_encoder_3``.
            max_sequence_length: T5 tokens (256 as in the SD3 pipeline's default).
            options: see :class:`~diffalign.families.base.ModelFamily`; ``loss_weighting`` may be
                ``"sigma_sqrt"`` or ``"cosmap"`` (``compute_loss_weighting_for_sd3``).
        """
        super().__init__(pipe, path, **options)
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.use_t5 = use_t5
        self.max_sequence_length = max_sequence_length
        # A fresh scheduler: sampling calls set_timesteps on pipe.scheduler, which rewrites its
        # sigmas; training must keep the N shifted training sigmas.
        self.train_sigmas = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config).sigmas.float()

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

    def _time_from_index(self, index: Tensor) -> Tensor:
        return self.train_sigmas.to(index.device)[index]

    def _add_noise_flat(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        sigma = per_group(t, x0)
        return (1 - sigma) * x0 + sigma * noise

    def noise_scales(self, t: Tensor) -> tuple[Tensor, Tensor]:
        sigma = t.float()
        return 1 - sigma, sigma

    def sampling_times(self, steps: int) -> Tensor:
        # The pipeline's shifted sigmas (FlowMatchEulerDiscreteScheduler.set_timesteps), ending at σ = 0.
        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config)
        if scheduler.config.get("use_dynamic_shifting"):
            raise NotImplementedError("sampling with a dynamically shifted schedule (use_dynamic_shifting) "
                                      "is not supported; the SD3 checkpoints use a fixed shift")
        scheduler.set_timesteps(steps)
        return scheduler.sigmas.float()

    def split_prediction(self, pred: Tensor, noisy: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        # x = (1 − σ)·x0 + σ·ε and v = ε − x0:  x0 = x − σ·v,  ε = x + (1 − σ)·v.
        sigma = per_group(t, noisy)
        return noisy + (1 - sigma) * pred, noisy - sigma * pred

    def _target_flat(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        return noise - x0

    def _predict_flat(self, model, noisy: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        dtype = input_dtype(model, self.denoiser)
        return model(
            hidden_states=noisy.to(dtype),
            timestep=t * self.num_train_timesteps,
            encoder_hidden_states=cond.prompt_embeds.to(dtype),
            pooled_projections=cond.pooled.to(dtype),
            return_dict=False,
        )[0]

    def loss_weight(self, t: Tensor) -> Tensor:
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        return compute_loss_weighting_for_sd3(self.loss_weighting, t.float())

    def _encode_text(self, prompts: list[str]) -> tuple[Tensor, Tensor | None]:
        self._require("text_encoder", "encode_prompts")
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=self.pipe.text_encoder.device,
            num_images_per_prompt=1, do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return embeds, pooled
