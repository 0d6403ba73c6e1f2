"""Stable Diffusion 1.x / 2.x: a UNet over VAE latents, one CLIP text encoder, a DDPM forward
process, epsilon (SD1.5, SD2.1-base) or v prediction (SD2.1-768).

The training maths always uses ``DDPMScheduler`` built from the checkpoint's scheduler config,
whatever sampler the pipeline ships (SDXL ships Euler, whose ``add_noise`` works in sigma space
and is not the variance-preserving forward process the UNet was trained on); diffusers' own
training scripts do the same.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffalign.families.base import Conditioning, FamilyError, ModelFamily, input_dtype
from diffalign.families.builds import CLIP_L, SD_VAE, random_clip
from diffalign.families.noise import per_group

_TINY_PREDICTION = {"sd15": "epsilon", "sd21": "v_prediction"}
"""The tiny SD pipelines: SD1.5-style (epsilon) and SD2.1-style (v prediction)."""
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8, cross_attention_dim=768,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
)
"""``stable-diffusion-v1-5``'s UNet config (0.86 B parameters)."""
SD15_VAE = dict(SD_VAE, latent_channels=4, sample_size=512, scaling_factor=0.18215)


class SDFamily(ModelFamily):
    """SD1.5/2.1-style pipelines (``StableDiffusionPipeline``).

    Normalised time ``t = index / (N − 1)`` for the scheduler's ``N`` training timesteps.
    """

    name = "sd"
    pipeline_class = "StableDiffusionPipeline"
    denoiser_name = "unet"
    text_components = ("text_encoder",)
    default_time_sampling = "uniform"
    loss_weightings = ("none", "min_snr")
    kohya_lora = True
    tiny_kinds = tuple(_TINY_PREDICTION)
    real_sizes = ("real",)
    real_size_resolution = 512

    def __init__(self, pipe, path: str | None = None, *, snr_gamma: float = 5.0, **options):
        """
        Args:
            snr_gamma: γ of Min-SNR weighting (Hang et al., 2023), used when
                ``loss_weighting="min_snr"``: ``w = min(SNR, γ)/SNR`` (ε) or ``min(SNR, γ)/(SNR+1)`` (v).
            options: see :class:`~diffalign.families.base.ModelFamily`.
        """
        super().__init__(pipe, path, **options)
        from diffusers import DDPMScheduler

        self.train_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.prediction_type = self.train_scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise FamilyError(
                f"prediction_type {self.prediction_type!r} in {path}/scheduler is not supported; "
                "diffalign trains epsilon- and v-prediction UNets"
            )
        self.snr_gamma = snr_gamma

    # ----------------------------------------------------------------------------- time
    def _time_from_index(self, index: Tensor) -> Tensor:
        return index.float() / (self.num_train_timesteps - 1)

    def timestep_index(self, t: Tensor) -> Tensor:
        """Normalised time ``[N]`` → integer DDPM timestep ``[N]`` in ``[0, N−1]``."""
        return (t.float() * (self.num_train_timesteps - 1)).round().long()

    # ----------------------------------------------------------------------------- maths
    def _add_noise_flat(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        # x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε
        return self.train_scheduler.add_noise(x0, noise, self.timestep_index(t).to(x0.device))

    def _target_flat(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        if self.prediction_type == "epsilon":
            return noise
        # v = sqrt(ᾱ_t)·ε − sqrt(1 − ᾱ_t)·x0
        return self.train_scheduler.get_velocity(x0, noise, self.timestep_index(t).to(x0.device))

    def noise_scales(self, t: Tensor) -> tuple[Tensor, Tensor]:
        # a = sqrt(ᾱ_t), s = sqrt(1 − ᾱ_t) at the rounded DDPM index, the index the UNet is told.
        # A negative index (the official inversion grid's first point) is the level before the
        # first timestep: DDIM's initial alpha, 1 under set_alpha_to_one, else ᾱ_0.
        index = self.timestep_index(t)
        abar = self.train_scheduler.alphas_cumprod.to(t.device)[index.clamp(min=0)].float()
        if bool((index < 0).any()):
            initial = 1.0 if self._ddim().config.set_alpha_to_one else float(self.train_scheduler.alphas_cumprod[0])
            abar = torch.where(index < 0, torch.full_like(abar, initial), abar)
        return abar.sqrt(), (1 - abar).sqrt()

    def inversion_levels(self, steps: int, latent_size: tuple[int, int] | None = None) -> Tensor:
        # DDIMInverseScheduler.set_timesteps(steps) as the diffusers InPO/SmPO pin (0.20) rolled
        # it: the grid's first point one spacing below its first timestep (−99 for SD1.5's
        # offset 1 at 10 steps), each step rising by N // steps to the next timestep.
        from diffusers import DDIMInverseScheduler

        inverse = DDIMInverseScheduler.from_config(self.pipe.scheduler.config)
        inverse.set_timesteps(steps)
        first = inverse.timesteps[:1] - self.num_train_timesteps // steps
        return torch.cat([first, inverse.timesteps]).float() / (self.num_train_timesteps - 1)

    def sampling_times(self, steps: int, latent_size: tuple[int, int] | None = None) -> Tensor:
        # DDIM's timesteps from the checkpoint's scheduler config (its spacing and offset), as
        # the pipeline uses them with a DDIMScheduler; each step lands on the next one, the last on t = 0.
        ddim = self._ddim()
        ddim.set_timesteps(steps)
        return torch.cat([ddim.timesteps.float() / (self.num_train_timesteps - 1), torch.zeros(1)])

    def final_scales(self) -> tuple[float, float]:
        # DDIM's last step lands on alpha = 1 under set_alpha_to_one, else on ᾱ_0 (SD1.5's config).
        return (1.0, 0.0) if self._ddim().config.set_alpha_to_one else super().final_scales()

    def _ddim(self):
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.pipe.scheduler.config)

    def split_prediction(self, pred: Tensor, noisy: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        a, s = (per_group(v, noisy) for v in self.noise_scales(t))  # [B, 1, 1, ...]
        if self.prediction_type == "epsilon":
            return pred, (noisy - s * pred) / a
        # v = a·ε − s·x0 and x = a·x0 + s·ε, with a² + s² = 1:  x0 = a·x − s·v,  ε = s·x + a·v.
        return s * noisy + a * pred, a * noisy - s * pred

    def _predict_flat(self, model, noisy: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        dtype = input_dtype(model, self.denoiser)
        return model(
            noisy.to(dtype),
            self.timestep_index(t).to(noisy.device),
            encoder_hidden_states=cond.prompt_embeds.to(dtype),
            added_cond_kwargs=self._added_cond(cond, dtype),
            return_dict=False,
        )[0]

    def _added_cond(self, cond: Conditioning, dtype: torch.dtype) -> dict | None:
        return None

    def loss_weight(self, t: Tensor) -> Tensor:
        if self.loss_weighting == "none":
            return torch.ones_like(t, dtype=torch.float32)
        from diffusers.training_utils import compute_snr

        snr = compute_snr(self.train_scheduler, self.timestep_index(t).to(t.device)).float()
        clipped = snr.clamp(max=self.snr_gamma)
        return clipped / snr if self.prediction_type == "epsilon" else clipped / (snr + 1)

    # ----------------------------------------------------------------------------- text
    def _encode_text(self, prompts: list[str]) -> tuple[Tensor, Tensor | None]:
        self._require("text_encoder", "encode_prompts")
        embeds, _ = self.pipe.encode_prompt(
            prompts, device=self.pipe.text_encoder.device, num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
        return embeds, None

    # ----------------------------------------------------------------------------- LoRA files
    def kohya_state_dict(self, peft_state: dict[str, Tensor], alpha: float) -> dict[str, Tensor]:
        """The UNet's adapters in kohya's keys (``lora_unet_…_to_q.lora_down.weight``, ``….alpha``).

        diffusers' ``convert_state_dict_to_kohya`` writes each ``alpha`` as the rank, which is right
        only when ``lora.alpha == lora.rank``; kohya scales by ``alpha / rank``, so the alpha the
        adapters were trained with is written instead.
        """
        from diffusers.utils import convert_state_dict_to_kohya

        state = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in peft_state.items()})
        return {k: torch.tensor(float(alpha)) if k.endswith(".alpha") else v.contiguous() for k, v in state.items()}

    # ----------------------------------------------------------------------------- builds
    @classmethod
    def _make_tiny_scheduler(cls, kind: str):
        import diffusers

        return diffusers.DDPMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
            steps_offset=1, clip_sample=False, prediction_type=_TINY_PREDICTION[kind],
        )

    @classmethod
    def tiny_components(cls, kind: str, seed: int = 0, with_t5: bool = True) -> dict:
        from diffalign.families.tiny_parts import tiny_clip_text_encoder, tiny_clip_tokenizer, tiny_vae

        scheduler = cls.tiny_scheduler(kind)
        return dict(
            unet=tiny_unet(seed=seed), vae=tiny_vae(seed=seed), scheduler=scheduler,
            text_encoder=tiny_clip_text_encoder(seed=seed), tokenizer=tiny_clip_tokenizer(),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )

    @classmethod
    def real_size_denoiser(cls) -> torch.nn.Module:
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel(**SD15_UNET)

    @classmethod
    def real_size_components(cls, use_t5: bool = False, size: str = "real") -> dict:
        from diffusers import AutoencoderKL

        from diffalign.families.tiny_parts import tiny_clip_tokenizer

        scheduler = cls.tiny_scheduler(cls.tiny_kinds[0])
        common = dict(vae=AutoencoderKL(**SD15_VAE).eval(), scheduler=scheduler, tokenizer=tiny_clip_tokenizer())
        return dict(common, unet=cls.real_size_denoiser(), text_encoder=random_clip(CLIP_L, False), safety_checker=None,
                    feature_extractor=None, requires_safety_checker=False)


def tiny_unet(seed: int = 0, **extra) -> torch.nn.Module:
    """A two-level ``UNet2DConditionModel`` over 4-channel latents with cross-attention width 32;
    ``extra`` adds to its config (SDXL: the ``text_time`` conditioning)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, **extra,
    )
