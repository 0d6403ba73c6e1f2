"""Reward models (docs/architecture.md, §3): ``score(images, prompts) -> Tensor[B]`` on the papers' scales.

``REWARDS`` maps each name to its class; :func:`load_reward` loads one from a hub id or a local
path. :class:`Ensemble` z-normalises and averages several.

| name           | model                                   | scale                                  |
|----------------|-----------------------------------------|----------------------------------------|
| ``pickscore``  | PickScore v1 (CLIP-H, Pick-a-Pic)        | exp(logit_scale) · cos, ≈ 20–23        |
| ``hpsv2``      | HPS v2.0 (OpenCLIP ViT-H-14)             | 100 · cos                              |
| ``hpsv2.1``    | HPS v2.1                                 | 100 · cos                              |
| ``image_reward``| ImageReward v1.0 (BLIP)                 | standardised, ≈ N(0, 1)                |
| ``clip_score`` | CLIP score, backbone in the label       | max(100 · cos, 0)                      |
| ``aesthetic``  | LAION aesthetic predictor v2 (ViT-L/14)  | AVA rating, 1–10                       |

Videos (:mod:`diffalign.rewards.video`): any of these scores a video ``[F, 3, H, W]`` averaged over
chosen frames through :class:`FrameAveraged`; ``VIDEO_REWARDS`` holds the rewards that score videos
only (``temporal_consistency``: 100 · mean cosine of consecutive frames' CLIP embeddings).
:func:`load_reward` and :func:`reward_class` know both tables.

Example:
    >>> reward = load_reward("pickscore", dtype=torch.float16, device="cuda")   # doctest: +SKIP
    >>> reward.score(images, ["a cat"] * len(images))                          # [B]
"""

from __future__ import annotations

import os

import torch

from diffalign.config import lookup
from diffalign.rewards.aesthetic import Aesthetic
from diffalign.rewards.base import RewardLoadError, RewardModel
from diffalign.rewards.clip_score import CLIPScore
from diffalign.rewards.ensemble import Ensemble, load_ensemble
from diffalign.rewards.hps import HPSv2, HPSv21
from diffalign.rewards.image_reward import ImageReward
from diffalign.rewards.pickscore import PickScore
from diffalign.rewards.preprocess import ImageTransform
from diffalign.rewards.video import VIDEO_REWARDS, FrameAveraged, TemporalConsistency, VideoEnsemble, scores_videos

REWARDS = {
    "pickscore": PickScore,
    "hpsv2": HPSv2,
    "hpsv2.1": HPSv21,
    "image_reward": ImageReward,
    "clip_score": CLIPScore,
    "aesthetic": Aesthetic,
}


def reward_class(name: str) -> type[RewardModel]:
    """The class registered as ``name`` (an image reward or a video-only one); a ``ValueError``
    (``ConfigError``) listing the known names otherwise."""
    return lookup({**REWARDS, **VIDEO_REWARDS}, name, "reward model")


def load_reward(name: str, path_or_id: str | os.PathLike | None = None, dtype: torch.dtype | None = torch.float32,
                device: str | torch.device | None = "cpu", **kwargs) -> RewardModel:
    """Load the reward model ``name`` in ``eval()`` mode, frozen, in ``dtype`` on ``device``.

    Args:
        path_or_id: local file or folder, or hub id; default: the model's published weights.
        kwargs: model-specific options (``processor=``, ``backbone=``, ``tokenizer=``, ``clamp=``).

    Raises:
        RewardLoadError: weights not found, naming the files and where they were looked for.
    """
    return reward_class(name).from_pretrained(path_or_id, dtype=dtype, device=device, **kwargs)


__all__ = [
    "REWARDS", "VIDEO_REWARDS", "Aesthetic", "CLIPScore", "Ensemble", "FrameAveraged", "HPSv2", "HPSv21", "ImageReward",
    "ImageTransform", "PickScore", "RewardLoadError", "RewardModel", "TemporalConsistency", "VideoEnsemble",
    "load_ensemble", "load_reward", "reward_class", "scores_videos",
]
