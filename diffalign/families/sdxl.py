"""SDXL: the SD UNet maths plus two CLIP text encoders (penultimate hidden states concatenated),
the pooled embedding of the second, and six micro-conditioning "time ids" per image
(original size, crop top-left, target size; Podell et al., 2023, §2.2).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffalign.families.base import Conditioning, FamilyError
from diffalign.families.sd import SDFamily


class SDXLFamily(SDFamily):
    """SDXL-style pipelines (``StableDiffusionXLPipeline``)."""

    name = "sdxl"
    pipeline_class = "StableDiffusionXLPipeline"
    text_components = ("text_encoder", "text_encoder_2")

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
