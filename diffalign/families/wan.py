"""Wan 2.1 text-to-video (Wan Team, 2025, "Wan: Open and Advanced Large-Scale Video Generative
Models"): a video DiT (``WanTransformer3DModel``) trained by rectified flow over the latents of a
causal 3-D VAE (``AutoencoderKLWan``), conditioned on UMT5 text embeddings.

How Wan differs from the image families, all of it here:
- latents are ``[B, K, C, f, h, w]``, ``f = (frames − 1)/4 + 1``: the VAE keeps the first frame
  and compresses each later run of 4 (``frames ≡ 1 mod 4``, else a clear error);
- the VAE normalises **per channel**: ``z' = (z − latents_mean[c]) / latents_std[c]`` (its config's
  16-value lists), not one scaling factor;
- the flow's shift is the scheduler's ``flow_shift`` (the released checkpoints ship a UniPC
  scheduler over flow sigmas; 3.0 for 480p, 5.0 for 720p) or ``shift`` (FlowMatchEuler);
- text is the pipeline's own ``encode_prompt``: UMT5 states trimmed to the prompt's tokens and
  zero-padded to ``max_sequence_length`` (512, the pipeline's ``__call__`` default; the
  transformer gets no mask, so the pad length must match what inference uses).

Wan 2.2, the same pipeline class, in two forms (:meth:`WanFamily.architecture` names them):
- A14B: two experts, ``transformer`` for timesteps ``≥ boundary_ratio·N`` (high noise) and
  ``transformer_2`` below; the family's denoiser is then their :class:`~diffalign.families.experts.ExpertPair`,
  which routes each sample by its time, and ``model.experts`` picks the experts a run trains
  (one expert: training times drawn in its range only);
- TI2V-5B: a 48-channel VAE compressing 16×16 pixels (``scale_factor_spatial``) and
  ``expand_timesteps`` (a timestep per latent token, for its image conditioning); for
  text-to-video every token has the step's time, which the transformer's one-per-sample path
  computes alike, so the family passes that (tested against the pipeline's own sampling).
Time sampling defaults to uniform over the shifted training sigmas.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffalign.families.base import FamilyError, ModelFamily
from diffalign.families.experts import EXPERTS, ExpertPair
from diffalign.families.flow import FlowMatching
from diffalign.families.loading import vae_temporal_factor


class WanFamily(FlowMatching, ModelFamily):
    """Wan 2.1 and 2.2 text-to-video pipelines (``WanPipeline``)."""

    name = "wan"
    pipeline_class = "WanPipeline"
    denoiser_name = "transformer"
    text_components = ("text_encoder",)
    default_time_sampling = "uniform"
    media = "video"
    pixel_ndim = 4  # a video is [3, F, H, W]
    tiny_kinds = ("wan", "wan22", "wan22_ti2v")

    def __init__(self, pipe, path: str | None = None, *, max_sequence_length: int | None = None,
                 experts: list[str] | None = None, **options):
        """
        Args:
            max_sequence_length: UMT5 tokens; ``None`` = 512, what ``WanPipeline.__call__`` uses.
            experts: Wan 2.2 A14B only: the experts to train, ``"high_noise"`` and/or ``"low_noise"``
                (``None``: both).
            options: see :class:`~diffalign.families.base.ModelFamily`; ``loss_weighting`` may be
                ``"sigma_sqrt"`` or ``"cosmap"``.
        """
        super().__init__(pipe, path, **options)
        self.max_sequence_length = max_sequence_length or 512
        two = getattr(pipe, "transformer_2", None) is not None and pipe.config.get("boundary_ratio") is not None
        if experts is not None and not two:
            raise FamilyError(f"model.experts applies to a two-expert Wan 2.2 (A14B); {path} has one denoiser")
        unknown = set(experts or ()) - set(EXPERTS)
        if unknown or experts == []:
            raise FamilyError(f"model.experts: expected a non-empty list of {sorted(EXPERTS)}, got {experts}")
        self._pair = None
        if two:
            boundary = pipe.config["boundary_ratio"] * pipe.scheduler.config.num_train_timesteps
            self._pair = ExpertPair(pipe.transformer, pipe.transformer_2, boundary, experts or tuple(EXPERTS))
        self._init_flow()

    @property
    def denoiser(self) -> torch.nn.Module:
        """The transformer, or A14B's two as one :class:`~diffalign.families.experts.ExpertPair`."""
        return self._pair if self._pair is not None else self.pipe.transformer

    @classmethod
    def architecture(cls, path, revision: str | None = None) -> str | None:
        """Wan 2.2's A14B or TI2V-5B from ``model_index.json``; ``None`` for Wan 2.1."""
        from diffalign.families.loading import read_model_index

        index = read_model_index(path, revision)
        if (index.get("transformer_2") or [None])[0] is not None and index.get("boundary_ratio") is not None:
            return (f"Wan 2.2 A14B (two experts: transformer for timesteps ≥ {index['boundary_ratio']}·N, "
                    "transformer_2 below)")
        if index.get("expand_timesteps"):
            return "Wan 2.2 TI2V-5B (per-token timesteps; trained text-to-video)"
        return None

    def _time_from_index(self, index: Tensor) -> Tensor:
        """A one-expert A14B run draws its training times in that expert's range: the index into
        the N falling training sigmas is mapped linearly onto the expert's part of them."""
        sigmas = self.train_sigmas.to(index.device)
        if self._pair is None or len(self._pair.trained) == 2:
            return sigmas[index]
        n = len(sigmas)
        first_low = int((sigmas * self.num_train_timesteps >= self._pair.boundary).sum())  # sigmas fall
        low, high = (0, first_low) if self._pair.trained == ("high_noise",) else (first_low, n)
        return sigmas[low + index * (high - low) // n]

    def flow_shift(self) -> float:
        config = self.pipe.scheduler.config
        return float(config.get("flow_shift") if "flow_shift" in config else config.get("shift", 1.0))

    # ----------------------------------------------------------------------------- frames
    @classmethod
    def clip_problem(cls, frames: int) -> str | None:
        return frames_problem(frames)

    @property
    def temporal_factor(self) -> int:
        """Frames per latent frame after the first (4 for Wan 2.1)."""
        return vae_temporal_factor(self._vae_settings)

    def latent_frames(self, frames: int) -> int:
        """``(frames − 1)/4 + 1``, or a :class:`FamilyError` when ``frames ≢ 1 (mod 4)``."""
        why = frames_problem(frames, self.temporal_factor)
        if why:
            raise FamilyError(f"{why} ({self.path})")
        return (frames - 1) // self.temporal_factor + 1

    def check_pixels(self, pixels: Tensor) -> None:
        """Refuse a video tensor ``[..., 3, F, H, W]`` whose frame count the VAE cannot take."""
        if pixels.ndim < 4 or pixels.shape[-4] != 3:
            raise FamilyError(f"the wan family encodes videos shaped [..., 3, F, H, W]; got {tuple(pixels.shape)}")
        self.latent_frames(pixels.shape[-3])

    # ----------------------------------------------------------------------------- VAE scaling
    @property
    def latent_scale(self) -> Tensor:
        """``1 / latents_std`` per channel, shaped ``[C, 1, 1, 1]`` to broadcast over ``[..., C, f, h, w]``."""
        return 1.0 / self._per_channel("latents_std", 3)

    @property
    def _vae_shift(self) -> Tensor:
        return self._per_channel("latents_mean", 3)

    # ----------------------------------------------------------------------------- text
    def _encode_text(self, prompts: list[str]) -> tuple[Tensor, Tensor | None]:
        encoder = self._require("text_encoder", "encode_prompts")
        embeds, _ = self.pipe.encode_prompt(
            prompt=prompts, do_classifier_free_guidance=False, num_videos_per_prompt=1,
            max_sequence_length=self.max_sequence_length, device=encoder.device,
        )
        return embeds, None

    # ----------------------------------------------------------------------------- config-only facts
    @classmethod
    def pixel_multiple(cls, path, revision: str | None = None) -> int:
        """The VAE's spatial factor times the transformer's patch (Wan 2.1: 8 × 2 = 16 pixels)."""
        from diffusers import WanTransformer3DModel

        patch = WanTransformer3DModel.load_config(str(path), subfolder="transformer", revision=revision)["patch_size"]
        return super().pixel_multiple(path, revision) * int(patch[-1])

    # ----------------------------------------------------------------------------- builds
    @classmethod
    def _make_tiny_scheduler(cls, kind: str):
        from diffusers import UniPCMultistepScheduler

        # What the released Wan 2.1 folders ship (diffusers' convert_wan_to_diffusers.py, 480p).
        return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                       num_train_timesteps=1000, flow_shift=3.0)

    @classmethod
    def tiny_components(cls, kind: str, seed: int = 0, with_t5: bool = True) -> dict:
        from diffalign.families.tiny_parts import tiny_t5_tokenizer, tiny_umt5_encoder

        scheduler = cls.tiny_scheduler(kind)
        common = dict(scheduler=scheduler, text_encoder=tiny_umt5_encoder(seed=seed), tokenizer=tiny_t5_tokenizer())
        if kind == "wan22":  # A14B: two experts of one architecture, the released T2V boundary
            return dict(common, transformer=tiny_transformer(seed=seed), transformer_2=tiny_transformer(seed=seed + 1),
                        vae=tiny_vae(seed=seed), boundary_ratio=0.875)
        if kind == "wan22_ti2v":  # TI2V-5B: the 48-channel, 16x VAE and per-token timesteps
            return dict(common, transformer=tiny_transformer(seed=seed, channels=48), vae=tiny_vae_22(seed=seed),
                        expand_timesteps=True)
        return dict(common, transformer=tiny_transformer(seed=seed), vae=tiny_vae(seed=seed))


def frames_problem(frames: int, factor: int = 4) -> str | None:
    """Why a clip of ``frames`` frames cannot be encoded by a Wan VAE (``None`` when it can): it
    needs ``frames ≡ 1 (mod factor)``; the message names the nearest counts that work."""
    if frames >= 1 and (frames - 1) % factor == 0:
        return None
    low = max(1, (frames - 1) // factor * factor + 1)
    return (f"{frames} frames cannot be encoded: the Wan VAE needs 1 + {factor}·n frames "
            f"(e.g. {low} or {low + factor}; 81 for Wan 2.1's 5-second clips)")


def tiny_vae(seed: int = 0) -> torch.nn.Module:
    """The tiny ``AutoencoderKLWan`` of diffusers' own Wan tests (×8 spatial, ×4 temporal, 16
    channels, the released per-channel ``latents_mean``/``latents_std``)."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True]).eval()


def tiny_vae_22(seed: int = 0) -> torch.nn.Module:
    """A tiny Wan 2.2 ``AutoencoderKLWan`` as TI2V-5B's is shaped: 48 latent channels, 2×2 pixel
    patches in (12 channels) and residual blocks, ×16 spatial and ×4 temporal compression, a
    per-channel normalisation (values of our own, spread so a wrong channel order shows)."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(
        base_dim=4, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
        dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        scale_factor_spatial=16, scale_factor_temporal=4,
        latents_mean=[round(-0.2 + 0.4 * i / 47, 4) for i in range(48)],
        latents_std=[round(0.5 + 1.5 * i / 47, 4) for i in range(48)]).eval()


def tiny_transformer(seed: int = 0, channels: int = 16) -> torch.nn.Module:
    """A 2-layer ``WanTransformer3DModel`` (diffusers' test configuration: 2 heads × 12, text width
    32) over ``channels`` latent channels (16: Wan 2.1 and A14B; 48: TI2V-5B)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=channels, out_channels=channels,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )
