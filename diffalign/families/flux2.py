"""FLUX.2 [klein] (Black Forest Labs, 2026): a rectified-flow MM-DiT (``Flux2Transformer2DModel``)
over patchified, batch-normalised latents of its own VAE (``AutoencoderKLFlux2``), conditioned on
three hidden layers of Qwen3 (``Flux2KleinPipeline``).

How FLUX.2 differs from FLUX.1, all of it here:
- **latents**: the VAE's ``[C, H/8, W/8]`` posterior is patchified 2×2 into ``[4·C, H/16, W/16]``
  (``_patchify_latents``, channels outermost) and normalised per channel by the VAE's
  ``BatchNorm2d`` running statistics. That is the family's latent: its transformer takes each
  position as a token of ``4·C`` features (``_pack_latents`` only flattens), so
  :attr:`vae_scale_factor` is 16 and the latent scaling is already in the posterior
  :meth:`encode_posterior` returns (mean and std normalised alike, so a cached posterior needs
  no VAE weights to scale);
- **positions** are 4-D ``(T, H, W, L)``: ``(0, row, column, 0)`` per image token,
  ``(0, 0, 0, l)`` per text token;
- **text**: the states of Qwen3's layers 9, 18 and 27 side by side (``3·D`` wide), padded to
  512 tokens; the transformer gets no mask (as the pipeline gives none);
- **the shift** is ``compute_empirical_mu(image tokens, steps)``: it depends on the number of
  sampling steps as well as the size;
- **guidance**: [klein] base takes true classifier-free guidance (two forwards); the distilled
  [klein] (``is_distilled``) none: its :attr:`takes_guidance` is false, so a ``guidance`` other
  than 1 is ignored with a warning, as the pipeline ignores its ``guidance_scale``.

Time sampling defaults to uniform on the unshifted sigmas, as for FLUX.1.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from diffalign.families.base import Conditioning, FamilyError, ModelFamily, input_dtype
from diffalign.families.flow import FlowMatching

TEXT_LAYERS = (9, 18, 27)
"""Qwen3's hidden layers whose states FLUX.2 [klein] reads (the pipeline's ``text_encoder_out_layers``)."""


def patchify(latents: Tensor) -> Tensor:
    """``[N, C, h, w]`` → ``[N, 4·C, h/2, w/2]``, each channel's 2×2 patch consecutive."""
    n, c, h, w = latents.shape
    return latents.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, c * 4, h // 2, w // 2)


def unpatchify(latents: Tensor) -> Tensor:
    """Inverse of :func:`patchify`."""
    n, c4, h, w = latents.shape
    return latents.reshape(n, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c4 // 4, h * 2, w * 2)


def positions(n: int, rows: int, cols: int, tokens: int, device, dtype) -> tuple[Tensor, Tensor]:
    """``(img_ids [n, rows·cols, 4], txt_ids [n, tokens, 4])``: ``(0, r, c, 0)`` and ``(0, 0, 0, l)``."""
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    zeros = torch.zeros_like(r)
    image = torch.stack([zeros, r, c, zeros], dim=-1).reshape(-1, 4)
    text = torch.zeros(tokens, 4, dtype=torch.long)
    text[:, 3] = torch.arange(tokens)
    return (image.to(device, dtype).expand(n, -1, -1), text.to(device, dtype).expand(n, -1, -1))


class Flux2Family(FlowMatching, ModelFamily):
    """FLUX.2 [klein] pipelines (``Flux2KleinPipeline``)."""

    name = "flux2"
    pipeline_class = "Flux2KleinPipeline"
    denoiser_name = "transformer"
    text_components = ("text_encoder",)
    default_time_sampling = "uniform"
    tiny_kinds = ("flux2",)

    def __init__(self, pipe, path: str | None = None, *, max_sequence_length: int | None = None, **options):
        """
        Args:
            max_sequence_length: Qwen3 tokens per prompt; ``None`` = 512, the pipeline's default.
            options: see :class:`~diffalign.families.base.ModelFamily`.
        """
        super().__init__(pipe, path, **options)
        self.max_sequence_length = max_sequence_length or 512
        # A step-distilled [klein] takes no CFG: its pipeline ignores guidance_scale, and so do we.
        self.takes_guidance = not getattr(pipe.config, "is_distilled", False)
        self._init_flow()

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent side: the VAE's 8 times the 2×2 patchify (16)."""
        return super().vae_scale_factor * 2

    @classmethod
    def pixel_multiple(cls, path, revision: str | None = None) -> int:
        """The VAE's downsampling times the 2×2 patchify (16 pixels)."""
        return super().pixel_multiple(path, revision) * 2

    # ----------------------------------------------------------------------------- VAE: patchified, batch-normalised
    @torch.no_grad()
    def encode_posterior(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """The posterior ``(mean, std)`` ``[..., 4·C, h/2, w/2]``, patchified and normalised by the
        VAE's batch-norm statistics (``(z − μ_bn)/σ_bn``: the mean shifted and scaled, the std scaled)."""
        mean, std = super().encode_posterior(pixels)
        lead = mean.shape[:-3]
        bn_mean, bn_std = self._bn(mean)
        mean = (patchify(mean.flatten(0, -4)) - bn_mean) / bn_std
        std = patchify(std.flatten(0, -4)) / bn_std
        return mean.reshape(*lead, *mean.shape[1:]), std.reshape(*lead, *std.shape[1:])

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        vae = self._require("vae", "decode")
        lead = latents.shape[:-3]
        flat = latents.reshape(-1, *latents.shape[-3:]).to(vae.device, vae.dtype)
        bn_mean, bn_std = self._bn(flat)
        pixels = vae.decode(unpatchify(flat * bn_std + bn_mean)).sample.clamp(-1, 1)
        return pixels.reshape(*lead, *pixels.shape[1:])

    @property
    def latent_scale(self) -> float:
        return 1.0  # the normalisation is in the posterior (encode_posterior)

    @property
    def _vae_shift(self) -> float:
        return 0.0

    def _bn(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(μ_bn, σ_bn)`` ``[4·C, 1, 1]`` from the VAE's ``BatchNorm2d`` running statistics."""
        vae = self._require("vae", "encode_images")
        std = torch.sqrt(vae.bn.running_var + vae.config.batch_norm_eps)
        return (vae.bn.running_mean.view(-1, 1, 1).to(like.device, like.dtype),
                std.view(-1, 1, 1).to(like.device, like.dtype))

    # ----------------------------------------------------------------------------- text
    def _encode_text(self, prompts: list[str]) -> tuple[Tensor, Tensor | None]:
        encoder = self._require("text_encoder", "encode_prompts")
        embeds, _ = self.pipe.encode_prompt(prompt=prompts, device=encoder.device, num_images_per_prompt=1,
                                            max_sequence_length=self.max_sequence_length,
                                            text_encoder_out_layers=TEXT_LAYERS)
        return embeds, None

    # ----------------------------------------------------------------------------- the denoiser
    def _predict_flat(self, model, noisy: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        dtype = input_dtype(model, self.denoiser)
        n, c, h, w = noisy.shape
        img_ids, txt_ids = positions(n, h, w, cond.prompt_embeds.shape[1], noisy.device, dtype)
        out = model(hidden_states=self.denoiser_layout(noisy.to(dtype)), timestep=t.to(dtype), guidance=None,
                    encoder_hidden_states=cond.prompt_embeds.to(dtype), txt_ids=txt_ids, img_ids=img_ids,
                    return_dict=False)[0]
        return out.transpose(1, 2).reshape(n, c, h, w)

    def denoiser_layout(self, values: Tensor) -> Tensor:
        """``[N, C, h, w]`` → the transformer's tokens ``[N, h·w, C]`` (``_pack_latents``)."""
        return values.flatten(2).transpose(1, 2)

    # ----------------------------------------------------------------------------- sampling
    def sampling_times(self, steps: int, latent_size: tuple[int, int] | None = None) -> Tensor:
        """``[steps + 1]`` the pipeline's sigmas: ``linspace(1, 1/S, S)`` shifted by
        ``compute_empirical_mu(h·w, S)``, ending at 0."""
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

        scheduler = self._flow_scheduler()
        if not scheduler.config.get("use_dynamic_shifting"):
            return super().sampling_times(steps)
        if latent_size is None:
            raise FamilyError("FLUX.2's sampling schedule depends on the image size: pass latent_size")
        h, w = latent_size
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=compute_empirical_mu(h * w, steps))
        return scheduler.sigmas.float()

    # ----------------------------------------------------------------------------- builds
    @classmethod
    def _make_tiny_scheduler(cls, kind: str):
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                               time_shift_type="exponential")

    @classmethod
    def tiny_components(cls, kind: str, seed: int = 0, with_t5: bool = True) -> dict:
        from diffalign.families.tiny_parts import tiny_qwen2_tokenizer, tiny_qwen3

        return dict(transformer=tiny_transformer(seed=seed), vae=tiny_vae(seed=seed), scheduler=cls.tiny_scheduler(kind),
                    text_encoder=tiny_qwen3(layers=max(TEXT_LAYERS) + 1, seed=seed), tokenizer=tiny_qwen2_tokenizer(),
                    is_distilled=False)


def tiny_transformer(seed: int = 0) -> torch.nn.Module:
    """A ``Flux2Transformer2DModel`` with one double and one single block over 16-feature tokens
    (4 VAE channels patchified), 2 heads of 16, text width 48 (three Qwen3 layers of 16)."""
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(seed)
    return Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=48,
                                   timestep_guidance_channels=32, axes_dims_rope=[4, 4, 4, 4], guidance_embeds=False)


def tiny_vae(seed: int = 0) -> torch.nn.Module:
    """A 2-block ``AutoencoderKLFlux2`` (×2, 4 latent channels) whose batch-norm statistics are
    our own spread values (a fresh one's are 0 and 1, which would hide a missing normalisation)."""
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(seed)
    vae = AutoencoderKLFlux2(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                             latent_channels=4, norm_num_groups=4, sample_size=32, use_quant_conv=False,
                             use_post_quant_conv=False)
    with torch.no_grad():
        vae.bn.running_mean.copy_(torch.linspace(-0.5, 0.5, vae.bn.num_features))
        vae.bn.running_var.copy_(torch.linspace(0.25, 4.0, vae.bn.num_features))
    return vae.eval()


__all__ = ["Flux2Family", "patchify", "positions", "tiny_transformer", "tiny_vae", "unpatchify"]
