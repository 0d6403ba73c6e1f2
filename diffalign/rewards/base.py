"""The reward-model contract (docs/architecture.md, §3).

``score(images, prompts) -> Tensor[B]`` where ``images`` are

- a list of ``B`` PIL images: the *reference* path. Each model preprocesses as its official code
  does (PIL resizing where the original used PIL), under ``torch.no_grad``; or
- a float tensor ``[B, 3, H, W]`` in [0, 1] (e.g. a VAE decode ``x / 2 + 0.5``): the
  *differentiable* path. Resize, crop or pad and normalisation are torch operations, so
  gradients reach the input; the model's own weights are frozen.

Scores come back as float32 on the model's device, on the scale the papers report (PickScore
≈ 20–23, HPS × 100, ImageReward ≈ N(0, 1), aesthetic 1–10, CLIP score × 100).

``group_probs(images, prompt)`` is the softmax over one prompt's ``K`` images of
``preference_logits``: for PickScore and HPS the choice probabilities the models were trained
to give (exp(logit_scale) · cosine); for the others a Bradley–Terry reading of the score.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Sequence

import torch
from torch import Tensor, nn

from diffalign.errors import DiffalignError

if TYPE_CHECKING:
    from diffalign.rewards.preprocess import ImageTransform


class ScoreInputError(DiffalignError, ValueError):
    """Images or prompts that cannot be matched up, or a dataset to score that cannot be used;
    says which and how to fix it."""


class RewardLoadError(DiffalignError, OSError):
    """Weights or files of a reward model that cannot be found or do not fit; names the files
    and where they were looked for."""


def batch_size_of(images) -> int:
    """``B`` of a list of PIL images or of a ``[B, 3, H, W]`` tensor (checked)."""
    if isinstance(images, Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"an image tensor must be [B, 3, H, W] in [0, 1]; got shape {tuple(images.shape)}")
        return images.shape[0]
    if not isinstance(images, (list, tuple)):
        raise TypeError(f"images must be a list of PIL images or a [B, 3, H, W] tensor, not {type(images).__name__}")
    return len(images)


def expand_prompts(prompts: str | Sequence[str] | None, count: int, needed: bool = True, noun: str = "image") -> list[str]:
    """One prompt per image (or video: ``noun``): a single string is shared by all ``count``."""
    if prompts is None:
        if needed:
            article = "an" if noun[0] in "aeiou" else "a"
            raise ScoreInputError(f"this reward model scores {article} {noun} against its prompt: give prompts")
        return [""] * count
    if isinstance(prompts, str):
        return [prompts] * count
    prompts = list(prompts)
    if len(prompts) != count:
        raise ScoreInputError(f"got {count} {noun}s but {len(prompts)} prompts; give one prompt per {noun} or one for all")
    return prompts


class RewardModel(nn.Module):
    """Base class of every reward model.

    Subclasses set the class attributes, hold an :class:`ImageTransform` as ``transform`` and
    implement :meth:`score_pixels`; :meth:`preference_logits` defaults to the score.

    Attributes:
        name: key in :data:`diffalign.rewards.REWARDS`.
        default_id: where the released weights live (hub id) when no path is given.
        uses_prompts: ``False`` for prompt-free models (aesthetic).
    """

    name: ClassVar[str]
    default_id: ClassVar[str | None] = None
    uses_prompts: ClassVar[bool] = True
    transform: ImageTransform

    @property
    def label(self) -> str:
        """The name written next to every score (names the version or backbone where it matters)."""
        return self.name

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def score(self, images, prompts: str | Sequence[str] | None = None) -> Tensor:
        """``[B]`` float32 rewards of ``images`` (PIL list or ``[B, 3, H, W]`` in [0, 1]) for ``prompts``."""
        return self._run(self.score_pixels, images, prompts)

    def preference_logits(self, images, prompts: str | Sequence[str] | None = None) -> Tensor:
        """``[B]`` logits whose softmax over one prompt's images is :meth:`group_probs`."""
        return self._run(self.preference_logits_pixels, images, prompts)

    def group_probs(self, images, prompt: str | None = None) -> Tensor:
        """``[K]`` probabilities that each of one prompt's ``K`` images is preferred (sum to 1)."""
        return torch.softmax(self.preference_logits(images, prompt), dim=0)

    def score_pixels(self, pixels: Tensor, prompts: list[str]) -> Tensor:
        """``[B]`` scores of preprocessed ``pixels`` ``[B, 3, S, S]`` (normalised, model dtype)."""
        raise NotImplementedError

    def preference_logits_pixels(self, pixels: Tensor, prompts: list[str]) -> Tensor:
        return self.score_pixels(pixels, prompts)

    def _run(self, fn, images, prompts) -> Tensor:
        count = batch_size_of(images)
        prompts = expand_prompts(prompts, count, needed=self.uses_prompts)
        differentiable = isinstance(images, Tensor)
        with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            pixels = self.transform(images).to(self.device, self.dtype)
            return fn(pixels, prompts).float()


def finish(model: nn.Module, dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> nn.Module:
    """Put a loaded reward model in ``eval()`` mode (dropout off), frozen, in ``dtype`` on ``device``."""
    model.eval().requires_grad_(False)
    return model.to(device=device, dtype=dtype)
