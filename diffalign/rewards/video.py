"""Reward models for videos: image rewards averaged over frames, CLIP temporal consistency, and an
ensemble of both.

A *video* is a float tensor ``[F, 3, H, W]`` in [0, 1], frames first (uint8 ``[F, 3, H, W]`` in
0..255, what :func:`~diffalign.data.videos.read_frames` and the video pipelines return, is
accepted too and divided by 255), or a list of ``F`` PIL frames. A batch of ``B`` videos is

- a list of such videos (the frame count and size may differ between videos), or
- a float tensor ``[B, F, 3, H, W]`` in [0, 1]: the *differentiable* path (as is a list of float
  tensors), e.g. a video VAE decode moved to frames-first.

Every video reward returns ``score(videos, prompts) -> Tensor[B]`` float32 and says so with
``media = "video"`` (see :func:`scores_videos`).

| name (CLI)                 | class                  | scale                                          |
|----------------------------|------------------------|------------------------------------------------|
| any image reward + frames  | :class:`FrameAveraged` | the image reward's own, mean over frames       |
| ``temporal_consistency``   | :class:`TemporalConsistency` | 100 · mean cosine of consecutive frames  |

Example:
    >>> reward = FrameAveraged(load_reward("pickscore"), frames="every:4")   # doctest: +SKIP
    >>> reward.score([video_a, video_b], ["a cat", "a dog"])                   # [2]
"""

from __future__ import annotations

import os
from typing import Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from diffalign.rewards.base import RewardModel, ScoreInputError, expand_prompts, finish
from diffalign.rewards.clip import CLIPReward, load_clip_parts, processor_source
from diffalign.rewards.ensemble import Ensemble

FRAME_SPECS = "all | first | every:N"
"""How a frame choice is spelt (``--frames`` on the command line, ``frames=`` here)."""


# ----------------------------------------------------------------------------- frame choice
def parse_frames(frames: str | int) -> str | int:
    """``"all"``, ``"first"`` or the stride ``n ≥ 1`` of ``"all"``, ``"first"``, ``n`` or ``"every:n"``.

    Raises:
        ScoreInputError: anything else, naming the accepted spellings.
    """
    if isinstance(frames, bool):  # bool is an int; frames=True is a mistake, not a stride of 1
        raise ScoreInputError(f"frames must be {FRAME_SPECS}, got {frames!r}")
    if isinstance(frames, int):
        stride = frames
    elif frames in ("all", "first"):
        return frames
    elif isinstance(frames, str) and frames.startswith("every:") and frames[6:].strip().isdigit():
        stride = int(frames[6:])
    else:
        raise ScoreInputError(f"frames must be {FRAME_SPECS} (e.g. every:4), got {frames!r}")
    if stride < 1:
        raise ScoreInputError(f"frames=every:N needs N >= 1, got {stride}")
    return stride


def frames_label(frames: str | int) -> str:
    """The spelling of a parsed frame choice: ``all``, ``first`` or ``every:n``."""
    return f"every:{frames}" if isinstance(frames, int) else frames


def frame_indices(frames: str | int, count: int) -> list[int]:
    """Which of a video's ``count`` frames a parsed choice keeps: all, ``[0]``, or ``0, n, 2n, …``."""
    if frames == "first":
        return [0]
    return list(range(0, count, 1 if frames == "all" else frames))


# ----------------------------------------------------------------------------- video batches
def scores_videos(reward) -> bool:
    """True for a reward that takes videos (``media = "video"``); image rewards need :class:`FrameAveraged`."""
    return getattr(reward, "media", "image") == "video"


def as_video_list(videos) -> list:
    """The ``B`` videos of a batch as a list of ``[F, 3, H, W]`` tensors or of PIL-frame lists (checked).

    Raises:
        ScoreInputError: a batch or video of the wrong shape or type, saying which form is expected.
    """
    if isinstance(videos, Tensor):
        if videos.ndim == 4:
            raise ScoreInputError(
                f"a video reward takes a batch of videos; got one 4-D tensor {tuple(videos.shape)}. For one video "
                "[F, 3, H, W] pass [video] or video[None]; for images use the image reward itself")
        if videos.ndim != 5 or videos.shape[2] != 3:
            raise ScoreInputError(f"a video batch tensor must be [B, F, 3, H, W] in [0, 1]; got {tuple(videos.shape)}")
        return list(videos.unbind(0))
    if not isinstance(videos, (list, tuple)):
        raise ScoreInputError(f"videos must be a list of [F, 3, H, W] tensors or of PIL-frame lists, or a "
                              f"[B, F, 3, H, W] tensor; got {type(videos).__name__}")
    for position, video in enumerate(videos):
        _check_video(video, position)
    return list(videos)


def _check_video(video, position: int) -> None:
    if isinstance(video, Tensor):
        if video.ndim == 4 and video.shape[1] != 3 and video.shape[0] == 3:
            raise ScoreInputError(f"video {position} is {tuple(video.shape)}, channels first; rewards take frames "
                                  "first [F, 3, H, W]: pass video.transpose(0, 1)")
        if video.ndim != 4 or video.shape[1] != 3:
            raise ScoreInputError(f"video {position} must be [F, 3, H, W]; got {tuple(video.shape)}")
        if not (video.is_floating_point() or video.dtype == torch.uint8):
            raise ScoreInputError(f"video {position} is {video.dtype}: give float in [0, 1] or uint8 in 0..255")
    elif not isinstance(video, (list, tuple)):
        raise ScoreInputError(f"video {position} is a {type(video).__name__}: give a [F, 3, H, W] tensor or a list "
                              "of PIL frames")
    if len(video) == 0:
        raise ScoreInputError(f"video {position} has no frames")


def _pick(video, indices: list[int]):
    """Frames ``indices`` of one video: ``[n, 3, H, W]`` float in [0, 1], or a list of ``n`` PIL frames."""
    if not isinstance(video, Tensor):
        return [video[i] for i in indices]
    picked = video[indices]
    return picked.float() / 255 if picked.dtype == torch.uint8 else picked


def per_frame(fn: Callable, videos: list, prompts: list[str], indices: Callable[[int], list[int]]) -> list[Tensor]:
    """``fn(frames, frame_prompts)`` over the chosen frames of all videos, split back per video.

    Each video's prompt goes with each of its frames. ``fn`` sees every chosen frame of the batch in
    one call (``[N, 3, H, W]`` or a list of ``N`` PIL frames), except that tensor frames of
    different sizes cannot be stacked, so those make one call per frame size.

    Args:
        fn: ``(frames, prompts [N]) -> Tensor [N, ...]`` (an image reward's ``score``, an embedding).
        videos: from :func:`as_video_list`.
        indices: a video's frame count → the frames to use.

    Returns:
        ``B`` tensors ``[n_b, ...]``: ``fn``'s rows of each video's frames, in order.
    """
    clips = [_pick(video, indices(len(video))) for video in videos]
    groups: dict[object, list[int]] = {}
    for position, clip in enumerate(clips):
        key = tuple(clip.shape[-2:]) if isinstance(clip, Tensor) else "pil"  # PIL frames of any size mix
        groups.setdefault(key, []).append(position)
    out: list[Tensor | None] = [None] * len(clips)
    for members in groups.values():
        frames = _concat([clips[i] for i in members])
        frame_prompts = [prompts[i] for i in members for _ in range(len(clips[i]))]
        rows = fn(frames, frame_prompts)
        for position, part in zip(members, rows.split([len(clips[i]) for i in members])):
            out[position] = part
    return out


def _concat(clips: list):
    return torch.cat(clips) if isinstance(clips[0], Tensor) else [frame for clip in clips for frame in clip]


# ----------------------------------------------------------------------------- frame-averaged
class FrameAveraged(RewardModel):
    """An image reward scored on chosen frames of each video and averaged per video.

    ``score = mean over the chosen frames f of reward.score(frame f, prompt)``, on the image
    reward's own scale. The cost is one image score per chosen frame: ``"all"`` scores ``F``
    frames per video, ``every:n`` ``⌈F / n⌉``, ``"first"`` one.

    Args:
        reward: any image :class:`~diffalign.rewards.RewardModel` (an :class:`Ensemble` too).
        frames: ``"all"``, ``"first"``, an int ``n`` or ``"every:n"`` (frames ``0, n, 2n, …``).

    Attributes:
        label: ``<reward label>@frames:<all|first|every:n>``, e.g. ``pickscore@frames:every:4``.
    """

    name = "frame_averaged"
    media: ClassVar[str] = "video"

    def __init__(self, reward: RewardModel, frames: str | int = "all"):
        super().__init__()
        if scores_videos(reward):
            raise ScoreInputError(f"{reward.label} already scores videos; use it directly, not in FrameAveraged")
        self.reward = reward
        self.frames = parse_frames(frames)
        self.uses_prompts = reward.uses_prompts
        self.default_id = reward.default_id

    @property
    def label(self) -> str:
        return f"{self.reward.label}@frames:{frames_label(self.frames)}"

    def frame_indices(self, count: int) -> list[int]:
        """The frames of a ``count``-frame video this reward scores."""
        return frame_indices(self.frames, count)

    def score(self, videos, prompts: str | Sequence[str] | None = None) -> Tensor:
        """``[B]`` float32: the mean of the image reward's scores over each video's chosen frames."""
        return self._frame_mean(self.reward.score, videos, prompts)

    def preference_logits(self, videos, prompts: str | Sequence[str] | None = None) -> Tensor:
        """``[B]`` mean of the image reward's preference logits over each video's chosen frames, so
        :meth:`group_probs` is a softmax over one prompt's ``K`` videos."""
        return self._frame_mean(self.reward.preference_logits, videos, prompts)

    def _frame_mean(self, fn, videos, prompts) -> Tensor:
        videos = as_video_list(videos)
        prompts = expand_prompts(prompts, len(videos), needed=self.uses_prompts, noun="video")
        parts = per_frame(fn, videos, prompts, self.frame_indices)
        return torch.stack([part.float().mean() for part in parts])


# ----------------------------------------------------------------------------- temporal consistency
class TemporalConsistency(CLIPReward):
    """How little a video changes between frames, in CLIP's view (prompt-free).

        score = 100 · mean_{f=1}^{F-1} cos(e_{f-1}, e_f),   e_f = CLIP image embedding of frame f

    The common "subject/background consistency" reading of a CLIP image encoder, on CLIP score's
    ×100 scale and unclamped (so it is in [-100, 100] and its gradient never vanishes). A constant
    video scores 100; so does a one-frame video, which has no change to measure (so that a batch
    holding one still scores, rather than failing). Every frame is used: cap the count before (the
    CLI's ``--max-frames``). Not comparable across backbones, which the label names.

    Args:
        clip: a transformers ``CLIPModel``.
        transform: its image preprocessing.
        backbone: where the weights came from (part of the label).
    """

    name = "temporal_consistency"
    default_id = "openai/clip-vit-large-patch14"
    uses_prompts = False
    media: ClassVar[str] = "video"

    def __init__(self, clip, transform, backbone: str = default_id):
        super().__init__(clip, transform, tokenize=None)
        self.backbone = backbone

    @property
    def label(self) -> str:
        return f"{self.name}[{self.backbone}]"

    def score(self, videos, prompts: str | Sequence[str] | None = None) -> Tensor:
        """``[B]`` float32, 100 · mean cosine of consecutive frames' embeddings; ``prompts`` are ignored."""
        videos = as_video_list(videos)
        differentiable = any(isinstance(v, Tensor) and v.is_floating_point() for v in videos)
        with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            embeddings = per_frame(self._embed, videos, [""] * len(videos), lambda count: list(range(count)))
            return torch.stack([consecutive_cosine(e) for e in embeddings]).float() * 100.0

    def preference_logits(self, videos, prompts: str | Sequence[str] | None = None) -> Tensor:
        """The score itself (a Bradley–Terry reading): :meth:`group_probs` favours the steadier video."""
        return self.score(videos, prompts)

    def _embed(self, frames, prompts: list[str]) -> Tensor:
        """``[N, E]`` unit-norm embeddings of ``N`` frames (``[N, 3, H, W]`` or PIL)."""
        return self.image_features(self.transform(frames).to(self.device, self.dtype))

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike | None = None, processor: str | os.PathLike | None = None,
                        dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> TemporalConsistency:
        """Load a CLIP backbone (hub id or ``CLIPModel`` folder with ``preprocessor_config.json``), as
        :class:`~diffalign.rewards.CLIPScore` does; no tokenizer is needed."""
        path_or_id = str(path_or_id or cls.default_id)
        clip, transform, _ = load_clip_parts(path_or_id, processor_source(path_or_id, processor, path_or_id),
                                             "temporal consistency", dtype, with_tokenizer=False)
        return finish(cls(clip, transform, backbone=path_or_id), dtype, device)


def consecutive_cosine(embeddings: Tensor) -> Tensor:
    """Mean cosine of consecutive rows of unit-norm ``embeddings`` ``[F, E]`` (a scalar; 1 for ``F = 1``)."""
    if len(embeddings) < 2:
        return embeddings.new_ones(())  # one frame: nothing changes
    return F.cosine_similarity(embeddings[:-1], embeddings[1:], dim=-1).mean()


# ----------------------------------------------------------------------------- ensemble
class VideoEnsemble(Ensemble):
    """:class:`~diffalign.rewards.Ensemble` over videos: image members are wrapped in
    :class:`FrameAveraged` (``frames``), video members are used as they are; the z-normalisation,
    weights and :meth:`calibrate` are the image ensemble's. Statistics are keyed by the members'
    video labels (``pickscore@frames:all``, ``temporal_consistency[…]``).
    """

    media: ClassVar[str] = "video"

    def __init__(self, members: Sequence[RewardModel], weights: Sequence[float] | None = None,
                 stats=None, frames: str | int = "all"):
        super().__init__([m if scores_videos(m) else FrameAveraged(m, frames) for m in members], weights, stats)

    @property
    def label(self) -> str:
        return "video_" + super().label

    @torch.no_grad()
    def calibrate(self, videos, prompts: str | Sequence[str] | None = None, batch_size: int = 16) -> dict:
        """Each member's ``μ, σ`` on reference videos (a list or ``[B, F, 3, H, W]``); see
        :meth:`Ensemble.calibrate`. ``batch_size`` counts videos."""
        return super().calibrate(as_video_list(videos), prompts, batch_size)


VIDEO_REWARDS = {"temporal_consistency": TemporalConsistency}
"""Rewards that score videos only, by name (image rewards score videos through :class:`FrameAveraged`)."""
