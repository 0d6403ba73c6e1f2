"""PickScore: Kirstain et al., NeurIPS 2023, "Pick-a-Pic: An Open Dataset of User Preferences for
Text-to-Image Generation" (https://arxiv.org/abs/2305.01569; code yuvalkirstain/PickScore).

CLIP-H/14 (laion/CLIP-ViT-H-14-laion2B-s32B-b79K) fine-tuned on Pick-a-Pic; weights
``yuvalkirstain/PickScore_v1`` (a transformers ``CLIPModel``), tokenizer and image processor from
the LAION base repo, as the official README loads them.

    score = exp(logit_scale) · cos(text, image)                    (≈ 20–23 for SD-family images)
    group_probs = softmax over one prompt's images of the scores    (the README's ``calc_probs``)

Preprocessing: shortest side → 224 (bicubic), centre crop 224, OpenAI CLIP mean/std;
text padded and truncated to 77 tokens.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from diffalign.rewards.base import finish
from diffalign.rewards.clip import CLIPReward, load_clip_parts, processor_source


class PickScore(CLIPReward):
    """PickScore on the scale the paper reports: exp(logit_scale) × cosine."""

    name = "pickscore"
    default_id = "yuvalkirstain/PickScore_v1"
    default_processor = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"

    def score_pixels(self, pixels: Tensor, prompts: list[str]) -> Tensor:
        return self.logit_scale() * self.cosine(pixels, prompts)

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike | None = None, processor: str | os.PathLike | None = None,
                        dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> PickScore:
        """Load PickScore weights (hub id or ``CLIPModel`` folder) and the processor.

        Args:
            processor: tokenizer + ``preprocessor_config.json`` source; default: the weights
                folder when it holds a tokenizer, else the LAION CLIP-H repo.
        """
        path_or_id = path_or_id or cls.default_id
        source = processor_source(path_or_id, processor, cls.default_processor)
        clip, transform, tokenize = load_clip_parts(path_or_id, source, "PickScore", dtype)
        return finish(cls(clip, transform, tokenize), dtype, device)
