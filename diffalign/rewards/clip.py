"""CLIP dual encoders as reward models: the part PickScore, HPSv2, CLIP score and the aesthetic
predictor share.

A :class:`CLIPReward` holds a transformers ``CLIPModel`` (Radford et al., 2021, "Learning
Transferable Visual Models From Natural Language Supervision"), an :class:`ImageTransform`
and a tokenizer, and computes unit-norm image and text embeddings ``[B, E]`` and their cosine.
Subclasses choose the scale: PickScore exp(logit_scale), HPS 100, CLIP score 100 clamped at 0.
"""

from __future__ import annotations

import math
import os
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from diffalign.rewards.base import RewardLoadError, RewardModel
from diffalign.rewards.loading import has_tokenizer, load_pretrained, load_tokenizer, read_json
from diffalign.rewards.preprocess import ImageTransform, transform_from_processor

CONTEXT_LENGTH = 77  # CLIP's text context; longer prompts are truncated, as every official scorer does

Tokenize = Callable[[list[str]], dict]
"""``prompts -> {"input_ids": [B, L], "attention_mask": [B, L] (optional)}``."""


def projected(output) -> Tensor:
    """The projected embedding ``[B, E]`` returned by ``CLIPModel.get_image_features`` /
    ``get_text_features``: a tensor before transformers 5, an output object whose
    ``pooler_output`` holds it from transformers 5 on (huggingface/transformers PR #42564)."""
    if isinstance(output, Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"expected a tensor or an output with pooler_output, got {type(output).__name__}")
    return pooled


class HFTokenize:
    """A transformers tokenizer as a :data:`Tokenize`: pad to the longest prompt, truncate at 77."""

    def __init__(self, tokenizer, max_length: int = CONTEXT_LENGTH):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, prompts: list[str]) -> dict:
        tokens = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}


class CLIPReward(RewardModel):
    """Base of the CLIP-based rewards: unit-norm embeddings and their cosine.

    Args:
        clip: a transformers ``CLIPModel``.
        transform: the model's preprocessing.
        tokenize: prompts → token tensors (``None`` for image-only models).
    """

    def __init__(self, clip, transform: ImageTransform, tokenize: Tokenize | None):
        super().__init__()
        self.clip = clip
        self.transform = transform
        self.tokenize = tokenize

    def image_features(self, pixels: Tensor) -> Tensor:
        """``[B, E]`` unit-norm image embeddings of preprocessed ``pixels`` ``[B, 3, S, S]``."""
        return F.normalize(projected(self.clip.get_image_features(pixel_values=pixels)), dim=-1)

    def text_features(self, prompts: list[str]) -> Tensor:
        """``[B, E]`` unit-norm text embeddings; each distinct prompt is encoded once (a group's
        ``K`` images share theirs)."""
        position = {prompt: i for i, prompt in enumerate(dict.fromkeys(prompts))}
        tokens = {k: v.to(self.device) for k, v in self.tokenize(list(position)).items()}
        features = F.normalize(projected(self.clip.get_text_features(**tokens)), dim=-1)
        return features[torch.tensor([position[p] for p in prompts], device=features.device)]

    def cosine(self, pixels: Tensor, prompts: list[str]) -> Tensor:
        """``[B]`` cosine similarity of each image with its prompt."""
        return (self.image_features(pixels) * self.text_features(prompts)).sum(-1)

    def logit_scale(self) -> Tensor:
        """exp(logit_scale), the learnt temperature of the model's softmax over images."""
        return self.clip.logit_scale.exp()

    def preference_logits_pixels(self, pixels: Tensor, prompts: list[str]) -> Tensor:
        # The contrastive logits the model was trained on: a softmax over a prompt's images.
        return self.logit_scale() * self.cosine(pixels, prompts)


def load_clip_parts(path_or_id: str | os.PathLike, processor: str | os.PathLike, what: str, dtype: torch.dtype | None,
                    crop_offset: str = "floor", with_tokenizer: bool = True):
    """``(CLIPModel, ImageTransform, HFTokenize | None)`` from a weights source and a processor
    source (tokenizer + ``preprocessor_config.json``)."""
    from transformers import CLIPModel

    clip = load_pretrained(CLIPModel, path_or_id, what, dtype=dtype)
    transform = transform_from_processor(read_json(processor, "preprocessor_config.json", what), crop_offset=crop_offset)
    tokenize = HFTokenize(load_tokenizer(processor, what)) if with_tokenizer else None
    scale = clip.logit_scale.detach().exp().item()
    if not math.isfinite(scale):
        raise RewardLoadError(f"{what}: {path_or_id} holds a non-finite logit_scale")
    return clip, transform, tokenize


def processor_source(path_or_id: str | os.PathLike, processor: str | os.PathLike | None, default: str) -> str:
    """Where the tokenizer and image preprocessing come from: the ``processor`` asked for, else the
    weights folder itself when it holds a tokenizer, else the model's published processor."""
    if processor is not None:
        return str(processor)
    return str(path_or_id) if has_tokenizer(path_or_id) else default
