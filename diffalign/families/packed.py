"""What FLUX.1 and Qwen-Image share: a transformer that takes the latent as 2×2-patch tokens, and
a sampler whose shift grows with the image (``use_dynamic_shifting``).

- **Packing**: each 2×2 patch of ``[C, h, w]`` becomes one token of ``4·C`` features, channels
  outermost within it (``FluxPipeline._pack_latents``; ``QwenImagePipeline``'s is the same).
  diffalign keeps latents unpacked (``[C, h, w]``, as every other family and the latent cache do)
  and packs inside the forward, so the transformer's ``in_channels`` is ``4·C``.
- **The shift**: ``μ`` grows linearly in the number of packed tokens from ``base_shift`` at
  ``base_image_seq_len`` to ``max_shift`` at ``max_image_seq_len`` (the pipelines'
  ``calculate_shift``), on the sigmas ``linspace(1, 1/S, S)``; so :meth:`sampling_times` takes the
  latent size. Training draws from the scheduler's unshifted sigmas, as diffusers' FLUX and
  Qwen-Image scripts do (a dynamically shifted scheduler stores them unshifted).
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from diffalign.families.base import FamilyError


def pack(latents: Tensor) -> Tensor:
    """``[N, C, h, w]`` → ``[N, (h/2)·(w/2), 4·C]``: each 2×2 patch a token."""
    n, c, h, w = latents.shape
    return latents.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, (h // 2) * (w // 2), 4 * c)


def unpack(tokens: Tensor, h: int, w: int) -> Tensor:
    """Inverse of :func:`pack`: ``[N, (h/2)·(w/2), 4·C]`` → ``[N, C, h, w]``."""
    n, _, features = tokens.shape
    c = features // 4
    return tokens.view(n, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


class PackedLatents:
    """Mixin (before ``FlowMatching``) for a family whose transformer packs 2×2 latent patches and
    whose sampler shifts by the image size."""

    @property
    def latent_channels(self) -> int:
        """The VAE's channels: the transformer takes 4 per packed token."""
        return self.denoiser.config.in_channels // 4

    @classmethod
    def pixel_multiple(cls, path, revision: str | None = None) -> int:
        """The VAE's downsampling times 2: the transformer packs 2×2 latent patches (16 pixels)."""
        return super().pixel_multiple(path, revision) * 2

    def denoiser_layout(self, values: Tensor) -> Tensor:
        """``[N, C, h, w]`` → the transformer's packed ``[N, (h/2)·(w/2), 4·C]``."""
        return pack(values)

    def sampling_times(self, steps: int, latent_size: tuple[int, int] | None = None) -> Tensor:
        """``[steps + 1]`` the pipeline's sigmas for ``steps`` steps of a latent of
        ``latent_size = (h, w)`` (the dynamic shift depends on it), ending at 0."""
        scheduler = self._flow_scheduler()
        if not scheduler.config.get("use_dynamic_shifting"):
            return super().sampling_times(steps)
        if latent_size is None:
            raise FamilyError(f"the {self.name} sampling schedule depends on the image size (use_dynamic_shifting): "
                              "pass latent_size")
        h, w = latent_size
        sigmas = np.linspace(1.0, 1 / steps, steps)  # the pipelines' __call__
        scheduler.set_timesteps(sigmas=sigmas, mu=self.shift_mu((h // 2) * (w // 2)))
        return scheduler.sigmas.float()

    def shift_mu(self, image_tokens: int) -> float:
        """``μ`` of the dynamic shift for ``image_tokens`` packed tokens (``calculate_shift``)."""
        c = self.pipe.scheduler.config
        base, top = c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096)
        low, high = c.get("base_shift", 0.5), c.get("max_shift", 1.15)
        return low + (high - low) * (image_tokens - base) / (top - base)


__all__ = ["PackedLatents", "pack", "unpack"]
