"""CLIP score: Hessel et al., EMNLP 2021, "CLIPScore: A Reference-free Evaluation Metric for Image
Captioning" (https://arxiv.org/abs/2104.08718), in torchmetrics' form:

    score = max(100 · cos(text, image), 0)

The backbone is a parameter and part of the label (``clip_score[openai/clip-vit-large-patch14]``):
numbers from different backbones are not comparable. Default: OpenAI ViT-L/14, torchmetrics'
default. ``clamp=False`` keeps the raw 100 · cosine, whose gradient does not vanish below 0 (use
it as a training reward).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from diffalign.rewards.base import finish
from diffalign.rewards.clip import CLIPReward, load_clip_parts, processor_source


class CLIPScore(CLIPReward):
    """100 × cosine of a CLIP backbone, clamped at 0 unless ``clamp=False``."""

    name = "clip_score"
    default_id = "openai/clip-vit-large-patch14"

    def __init__(self, clip, transform, tokenize, backbone: str = default_id, clamp: bool = True):
        super().__init__(clip, transform, tokenize)
        self.backbone = backbone
        self.clamp = clamp

    @property
    def label(self) -> str:
        return f"{self.name}[{self.backbone}]" + ("" if self.clamp else "[unclamped]")

    def score_pixels(self, pixels: Tensor, prompts: list[str]) -> Tensor:
        score = 100.0 * self.cosine(pixels, prompts)
        return score.clamp(min=0.0) if self.clamp else score

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike | None = None, processor: str | os.PathLike | None = None,
                        dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                        clamp: bool = True) -> CLIPScore:
        """Load a CLIP backbone (hub id or ``CLIPModel`` folder with its tokenizer and processor)."""
        path_or_id = str(path_or_id or cls.default_id)
        clip, transform, tokenize = load_clip_parts(path_or_id, processor_source(path_or_id, processor, path_or_id),
                                                    "CLIP score", dtype)
        return finish(cls(clip, transform, tokenize, backbone=path_or_id, clamp=clamp), dtype, device)
