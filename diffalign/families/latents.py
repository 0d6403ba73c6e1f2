"""The VAE side of a family: images to scaled latents and back.

Works on any leading shape (``[B, K, 3, H, W]`` images, ``[B, K, C, h, w]`` latents; a video
family's ``[B, K, 3, F, H, W]`` and ``[B, K, C, f, h, w]``): the VAE sees them flattened to one
batch axis. The scaling is ``(z − shift)·scale``, where shift and scale are numbers (SD's
``scaling_factor``, SD3's ``shift_factor``) or per-channel tensors ``[C, 1, ...]`` (Wan).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from diffalign.families.loading import FamilyError, vae_downsampling

Generators = "torch.Generator | list[torch.Generator] | None"
"""One generator for the whole batch, or one per group (the first dimension)."""


class LatentOperations:
    """``encode_images``, ``decode`` and the VAE's latent scaling (read from its config file
    when the VAE is not loaded, as under the latent cache)."""

    media = "image"
    """What the family's VAE encodes: ``"image"`` or ``"video"``."""
    pixel_ndim = 3
    """Dimensions of one item's pixels: 3 for an image ``[3, H, W]``, 4 for a video ``[3, F, H, W]``."""

    @classmethod
    def clip_problem(cls, frames: int) -> str | None:
        """Why clips of ``frames`` frames cannot be encoded by this family's VAE (``None`` when they
        can); read from the class alone, so checks run before any weights load."""
        return f"the {cls.name} family makes images, not clips of {frames} frames"

    def latent_frames(self, frames: int) -> int:
        """Latent frames of a clip of ``frames`` frames, or a :class:`FamilyError` when the VAE
        cannot encode such a clip (an image family: never; a video family overrides this)."""
        raise FamilyError(self.clip_problem(frames))

    def check_pixels(self, pixels: Tensor) -> None:
        """Refuse pixels the VAE cannot encode (a video family checks the frame count)."""

    @property
    def latent_channels(self) -> int:
        """``C`` of one item's latent (what the VAE makes and the noise has): the denoiser's input
        channels (FLUX.1 and Qwen-Image pack 2×2 patches: :mod:`~diffalign.families.packed` overrides it)."""
        return self.denoiser.config.in_channels

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent along each side (from the VAE's config file when it is not loaded:
        the pipelines then fall back to a hard-coded 8)."""
        vae = getattr(self.pipe, "vae", None)
        return vae_downsampling(vae.config if vae is not None else self._vae_config)

    @torch.no_grad()
    def encode_images(self, pixels: Tensor, generator: Generators = None) -> Tensor:
        """VAE-encode images and apply the checkpoint's latent scaling (and SD3's shift).

        Args:
            pixels: ``[..., 3, H, W]`` in [-1, 1], e.g. ``[B, K, 3, H, W]``.
            generator: for the sample drawn from the VAE posterior (as Diffusion-DPO does).

        Returns:
            ``[..., C, H/f, W/f]`` latents, ``f`` the VAE scale factor, in the VAE's dtype.
        """
        mean, std = self.encode_posterior(pixels)
        return self.latents_from_posterior(mean, std, generator)

    @torch.no_grad()
    def encode_posterior(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """The VAE posterior of each image, before scaling: ``(mean, std)``, each ``[..., C, h, w]``.

        The latent cache stores these rather than one sample, so cached training still draws a
        fresh posterior sample each time, exactly as the uncached path does.
        """
        vae = self._require("vae", "encode_images")
        self.check_pixels(pixels)
        n = self.pixel_ndim
        lead = pixels.shape[:-n]
        flat = pixels.reshape(-1, *pixels.shape[-n:]).to(vae.device, vae.dtype)
        posterior = vae.encode(flat).latent_dist
        return (posterior.mean.reshape(*lead, *posterior.mean.shape[1:]),
                posterior.std.reshape(*lead, *posterior.std.shape[1:]))

    def latents_from_posterior(self, mean: Tensor, std: Tensor, generator: Generators = None) -> Tensor:
        """Draw ``mean + std·ε`` and scale it to the denoiser's latent space: ``(z − shift)·scale``.

        Draws ε as diffusers' ``DiagonalGaussianDistribution.sample`` does, so the same generator
        gives the same latents whether the posterior came from the VAE or from the cache.
        """
        from diffusers.utils.torch_utils import randn_tensor

        eps = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        shift, scale = self._affine(mean)
        return (mean + std * eps - shift) * scale

    def _affine(self, like: Tensor):
        """``(shift, scale)`` of the latent scaling, as numbers or tensors on ``like``'s device and dtype."""
        def place(value):
            return value.to(like.device, like.dtype) if isinstance(value, Tensor) else value

        return place(self._vae_shift), place(self.latent_scale)

    @property
    def latent_scale(self) -> float:
        """The VAE's ``scaling_factor``, read from its config file when the VAE is not loaded."""
        vae = getattr(self.pipe, "vae", None)
        if vae is not None:
            return vae.config.scaling_factor
        return self._vae_config["scaling_factor"]

    @property
    def _vae_shift(self) -> float:
        vae = getattr(self.pipe, "vae", None)
        config = vae.config if vae is not None else self._vae_config
        return config.get("shift_factor", None) or 0.0

    @property
    def _vae_settings(self) -> dict:
        """The VAE's config: the loaded VAE's, else its config file's (under the latent cache)."""
        vae = getattr(self.pipe, "vae", None)
        return vae.config if vae is not None else self._vae_config

    def _per_channel(self, key: str, dims: int) -> Tensor:
        """The VAE config's per-channel list ``key`` (``latents_mean``, ``latents_std``: VAEs that
        normalise per channel, Wan's and Qwen-Image's) shaped ``[C, 1, …]`` to broadcast over ``dims``
        trailing dimensions after ``C``; kept once, as the cached-latent path scales at every step."""
        cached = self.__dict__.setdefault("_per_channel_tensors", {})
        if key not in cached:
            values = self._vae_settings.get(key)
            if values is None:
                raise FamilyError(f"the VAE of {self.path} has no {key} in its config; the {self.name} family's VAE "
                                  "normalises per channel")
            cached[key] = torch.tensor(values, dtype=torch.float32).view(-1, *[1] * dims)
        return cached[key]

    @functools.cached_property
    def _vae_config(self) -> dict:
        """The VAE's config file, read once: the cached-latent path asks for it at every step."""
        from diffusers import AutoencoderKL

        return AutoencoderKL.load_config(self.path, subfolder="vae", revision=self.revision)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Inverse of :meth:`encode_images`: ``[..., C, h, w]`` latents → ``[..., 3, H, W]`` in [-1, 1]
        (a video family: ``[..., C, f, h, w]`` → ``[..., 3, F, H, W]``)."""
        vae = self._require("vae", "decode")
        n = self.pixel_ndim
        lead = latents.shape[:-n]
        flat = latents.reshape(-1, *latents.shape[-n:]).to(vae.device, vae.dtype)
        shift, scale = self._affine(flat)
        flat = flat / scale + shift
        pixels = vae.decode(flat).sample.clamp(-1, 1)
        return pixels.reshape(*lead, *pixels.shape[1:])
