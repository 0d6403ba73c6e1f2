"""Qwen-Image (Qwen Team, 2025): a rectified-flow MM-DiT (``QwenImageTransformer2DModel``) over
16-channel latents of its own VAE (``AutoencoderKLQwenImage``), conditioned on the last hidden
states of Qwen2.5-VL (``QwenImagePipeline``).

How Qwen-Image differs, all of it here (the packed 2×2 tokens and the size-dependent shift it
shares with FLUX are :mod:`~diffalign.families.packed`'s):
- **text**: the pipeline wraps each prompt in a chat template, runs Qwen2.5-VL and keeps the
  hidden states of the prompt's own tokens (dropping the template's first tokens), so prompts
  have different lengths; the transformer takes them with a mask. The family zero-pads every
  prompt to ``max_sequence_length`` (the pipeline's 512), so texts batch, join for guidance and
  cache like any family's, and rebuilds the mask at the forward from the rows that are not all
  zero (a real token's state is never exactly zero), trimmed to the batch's longest prompt as
  the pipeline pads to it;
- **the VAE** is a causal 3-D VAE run on one frame (``[N, 3, 1, H, W]``), normalised per channel
  by its config's ``latents_mean``/``latents_std`` (as Wan's);
- **guidance** is true classifier-free guidance (``true_cfg_scale``, two forwards: the solver's
  ``guidance`` with the empty prompt), each packed token's result rescaled to the conditional
  prediction's norm (:meth:`QwenImageFamily.combine_guidance`); the transformer takes no guidance input;
- the timestep is σ itself (the pipeline passes ``t / 1000``).

Time sampling defaults to uniform on the unshifted sigmas (diffusers' Qwen-Image LoRA script's
``--weighting_scheme none``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffalign.families.base import Conditioning, ModelFamily, input_dtype
from diffalign.families.flow import FlowMatching
from diffalign.families.packed import PackedLatents, pack, unpack


class QwenImageFamily(PackedLatents, FlowMatching, ModelFamily):
    """Qwen-Image pipelines (``QwenImagePipeline``)."""

    name = "qwen_image"
    pipeline_class = "QwenImagePipeline"
    denoiser_name = "transformer"
    text_components = ("text_encoder",)
    default_time_sampling = "uniform"
    tiny_kinds = ("qwen_image",)

    def __init__(self, pipe, path: str | None = None, *, max_sequence_length: int | None = None, **options):
        """
        Args:
            max_sequence_length: Qwen2.5-VL tokens per prompt, the padded length; ``None`` = 512,
                the pipeline's default.
            options: see :class:`~diffalign.families.base.ModelFamily`.
        """
        super().__init__(pipe, path, **options)
        self.max_sequence_length = max_sequence_length or 512
        self._init_flow()

    # ----------------------------------------------------------------------------- text
    def _encode_text(self, prompts: list[str]) -> tuple[Tensor, Tensor | None]:
        encoder = self._require("text_encoder", "encode_prompts")
        embeds, mask = self.pipe.encode_prompt(prompt=prompts, device=encoder.device, num_images_per_prompt=1,
                                               max_sequence_length=self.max_sequence_length)
        if mask is not None:
            embeds = embeds * mask[..., None].to(embeds.dtype)  # pads exactly zero (the pipeline's are)
        padded = embeds.new_zeros(embeds.shape[0], self.max_sequence_length, embeds.shape[-1])
        padded[:, :embeds.shape[1]] = embeds
        return padded, None

    # ----------------------------------------------------------------------------- the denoiser
    def _predict_flat(self, model, noisy: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        dtype = input_dtype(model, self.denoiser)
        n, _, h, w = noisy.shape
        mask = cond.prompt_embeds.ne(0).any(-1)                        # [N, L]: the prompt's own tokens
        length = int(mask.sum(1).max())
        out = model(hidden_states=pack(noisy.to(dtype)), timestep=t.to(dtype),
                    encoder_hidden_states=cond.prompt_embeds[:, :length].to(dtype),
                    encoder_hidden_states_mask=mask[:, :length].long(), img_shapes=[[(1, h // 2, w // 2)]] * n,
                    return_dict=False)[0]
        return unpack(out, h, w)

    def combine_guidance(self, pred: Tensor, pred_uncond: Tensor, guidance: float) -> Tensor:
        """``u + w·(c − u)``, then each packed token's 4·C features rescaled to the norm of the
        conditional prediction's (``QwenImagePipeline.__call__``)."""
        lead, (h, w) = pred.shape[:2], pred.shape[-2:]
        c, u = pack(pred.flatten(0, 1)), pack(pred_uncond.flatten(0, 1))
        combined = u + guidance * (c - u)
        combined = combined * (c.norm(dim=-1, keepdim=True) / combined.norm(dim=-1, keepdim=True))
        return unpack(combined, h, w).unflatten(0, lead)

    # ----------------------------------------------------------------------------- VAE: one frame, per channel
    @torch.no_grad()
    def encode_posterior(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean, std)`` ``[..., C, h, w]`` of each image, the VAE run on it as a one-frame clip."""
        vae = self._require("vae", "encode_images")
        lead = pixels.shape[:-3]
        flat = pixels.reshape(-1, *pixels.shape[-3:])[:, :, None].to(vae.device, vae.dtype)
        posterior = vae.encode(flat).latent_dist
        mean, std = posterior.mean[:, :, 0], posterior.std[:, :, 0]
        return mean.reshape(*lead, *mean.shape[1:]), std.reshape(*lead, *std.shape[1:])

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        vae = self._require("vae", "decode")
        lead = latents.shape[:-3]
        flat = latents.reshape(-1, *latents.shape[-3:]).to(vae.device, vae.dtype)
        shift, scale = self._affine(flat)
        pixels = vae.decode((flat / scale + shift)[:, :, None]).sample[:, :, 0].clamp(-1, 1)
        return pixels.reshape(*lead, *pixels.shape[1:])

    @property
    def latent_scale(self) -> Tensor:
        """``1 / latents_std`` per channel, ``[C, 1, 1]``."""
        return 1.0 / self._per_channel("latents_std", 2)

    @property
    def _vae_shift(self) -> Tensor:
        return self._per_channel("latents_mean", 2)

    # ----------------------------------------------------------------------------- builds
    @classmethod
    def _make_tiny_scheduler(cls, kind: str):
        from diffusers import FlowMatchEulerDiscreteScheduler

        # Qwen-Image's kind of schedule: a size-dependent exponential shift ending at a terminal σ.
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True,
                                               base_shift=0.5, max_shift=0.9, base_image_seq_len=256,
                                               max_image_seq_len=8192, shift_terminal=0.02,
                                               time_shift_type="exponential")

    @classmethod
    def tiny_components(cls, kind: str, seed: int = 0, with_t5: bool = True) -> dict:
        from diffalign.families.tiny_parts import tiny_qwen2_tokenizer, tiny_qwen25_vl

        return dict(transformer=tiny_transformer(seed=seed), vae=tiny_vae(seed=seed), scheduler=cls.tiny_scheduler(kind),
                    text_encoder=tiny_qwen25_vl(seed=seed), tokenizer=tiny_qwen2_tokenizer())


def tiny_transformer(seed: int = 0) -> torch.nn.Module:
    """A 2-layer ``QwenImageTransformer2DModel`` over 4-channel latents (16 packed features),
    3 heads of 16, text width 16 (the tiny Qwen2.5-VL's)."""
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(seed)
    return QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                       attention_head_dim=16, num_attention_heads=3, joint_attention_dim=16,
                                       guidance_embeds=False, axes_dims_rope=(8, 4, 4))


def tiny_vae(seed: int = 0) -> torch.nn.Module:
    """A tiny ``AutoencoderKLQwenImage``: 4 latent channels, ×4 spatial, a per-channel normalisation
    of our own values (spread, so a wrong channel order shows)."""
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(seed)
    return AutoencoderKLQwenImage(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                  temperal_downsample=[False, True], latents_mean=[-0.3, 0.1, 0.4, -0.05],
                                  latents_std=[1.8, 0.7, 1.2, 2.5]).eval()


__all__ = ["QwenImageFamily", "tiny_transformer", "tiny_vae"]
