"""Rewards for online RL (Flow-GRPO, DanceGRPO): several reward members scored on a step's samples
and summed with weights, the scalar that the step turns into advantages.

    total = Σ_i w_i · s_i        (raw scores, no normalisation)

as Flow-GRPO's ``multi_score`` combines them (``flow_grpo/rewards.py:393-398`` at yifan123/flow_grpo
ac4c86e: ``weighted_scores = [weight * score ...]`` summed into ``score_details['avg']``); its
training step then normalises ``avg`` per prompt into advantages. A negative weight makes a member
a penalty.

A member is named in the config by

- a key of :data:`~diffalign.rewards.REWARDS` or :data:`~diffalign.rewards.VIDEO_REWARDS`;
- ``geneval``: GenEval's rules as Flow-GRPO's partial score
  (:mod:`diffalign.evaluation.geneval_reward`; reads each image's GenEval record from ``metadata``);
- a plugin ``"package.module:Attr"``: a class or factory, called with the spec's ``options`` as
  keywords (plus ``path=`` when given and ``device=`` when it takes one), whose result has
  ``score(images, prompts) -> [n]`` or ``score(images, prompts, metadata) -> [n]``.

Example:
    >>> rewards = load_online_rewards([{"name": "pickscore"}, {"name": "geneval", "weight": 0.5}], "cuda")  # doctest: +SKIP
    >>> rewards.total(rewards(images, prompts, metadata))     # [N]; the call gives {label: [N]}  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Sequence

import torch
from torch import Tensor

from diffalign.rewards.base import ScoreInputError
from diffalign.rewards.video import FrameAveraged, parse_frames, scores_videos
from diffalign.typed_config import ConfigError

# GenEval's reward runs GenEval's rules, which live in evaluation/ (a layer above this one), so it is
# loaded by its plugin path like any other plugin rather than imported here.
BUILT_IN_PLUGINS = {"geneval": "diffalign.evaluation.geneval_reward:load_geneval_reward"}
LAYOUTS = ("NCFHW", "NFCHW")


class RewardSpecError(ConfigError):
    """A ``rewards:`` list that cannot be loaded; lists every problem found."""


@dataclasses.dataclass
class RewardSpec:
    """One member of the online reward.

    Attributes:
        name: a registered reward, ``geneval``, or a plugin ``"package.module:Attr"``.
        weight: its factor in :meth:`OnlineRewards.total` (any finite number).
        path: weights folder or hub id (for ``geneval``: the detector's model id or folder).
        frames: ``all | first | every:N`` frames an image reward scores of each video.
        batch_size: images (or videos) per call of the member's ``score``.
        options: keywords for the loader (``load_reward``'s model options, or the plugin's).
    """

    name: str
    weight: float = 1.0
    path: str | None = None
    frames: str | int = "all"
    batch_size: int = 16
    options: dict = dataclasses.field(default_factory=dict)


def plugin_path(name: str) -> str | None:
    """``"module:Attr"`` a member named ``name`` is loaded from, or ``None`` for a registered reward."""
    return BUILT_IN_PLUGINS.get(name) or (name if ":" in name else None)


# ----------------------------------------------------------------------------- checks
def check_reward_specs(specs: Any, media: str = "image") -> list[str]:
    """Every problem of a config's ``rewards:`` list, found without loading weights (plugins'
    modules are imported); ``[]`` when it can be loaded for ``media`` (``image`` or ``video``)."""
    if not isinstance(specs, (list, tuple)) or not specs:
        return ["rewards: give a non-empty list of members, e.g. [{name: pickscore, weight: 1.0}]"]
    problems = [f"rewards[{i}]: {p}" for i, spec in enumerate(specs) for p in _spec_problems(spec, media)]
    weights = [s.get("weight", 1.0) for s in specs if isinstance(s, dict)]
    if weights and all(isinstance(w, (int, float)) and w == 0 for w in weights):
        problems.append("rewards: every weight is 0, so the total reward is always 0; give a member a non-zero weight")
    names = [s.get("name") for s in specs if isinstance(s, dict)]
    for name in sorted({n for n in names if isinstance(n, str) and names.count(n) > 1}):
        problems.append(f"rewards: {name!r} is listed more than once; give each member once (its scores are keyed by name)")
    return problems


def _spec_problems(spec: Any, media: str) -> list[str]:
    if not isinstance(spec, dict):
        return [f"expected a mapping like {{name: pickscore, weight: 1.0}}, got {spec!r}"]
    keys = [f.name for f in dataclasses.fields(RewardSpec)]
    problems = [f"unknown key {key!r}; the keys are {', '.join(keys)}" for key in spec if key not in keys]
    name = spec.get("name")
    problems += [_name_problem(name, media)] if isinstance(name, str) else [f"name must be a string, got {name!r}"]
    weight = spec.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        problems.append(f"weight must be a finite number, got {weight!r}")
    if not isinstance(spec.get("path"), (str, type(None))):
        problems.append(f"path must be a folder or hub id (a string), got {spec.get('path')!r}")
    size = spec.get("batch_size", 16)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        problems.append(f"batch_size must be an integer >= 1, got {size!r}")
    try:
        parse_frames(spec.get("frames", "all"))
    except ScoreInputError as err:
        problems.append(str(err))
    if not isinstance(spec.get("options", {}), dict):
        problems.append(f"options must be a mapping of keyword arguments, got {spec.get('options')!r}")
    return [p for p in problems if p]


def _name_problem(name: str, media: str) -> str | None:
    from diffalign.rewards import REWARDS, VIDEO_REWARDS

    if name in REWARDS:
        return None
    if name in VIDEO_REWARDS:
        return None if media == "video" else f"{name} scores videos only; this run makes images"
    target = plugin_path(name)
    if target is None:
        known = ", ".join([*REWARDS, *VIDEO_REWARDS, *BUILT_IN_PLUGINS])
        return f"unknown reward {name!r}; the known ones are {known}, or a plugin 'package.module:Attr'"
    try:
        attribute = import_plugin(target)
    except RewardSpecError as err:
        return str(err)
    if media == "video" and getattr(attribute, "media", "image") != "video":
        return f"{name} scores images; a video run needs a plugin whose media is 'video' (registered rewards are frame-averaged)"
    return None


def import_plugin(target: str):
    """The attribute ``Attr`` of ``"package.module:Attr"``.

    Raises:
        RewardSpecError: a malformed path, a module that does not import, or no such attribute.
    """
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise RewardSpecError(f"plugin {target!r}: expected 'package.module:Attr'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise RewardSpecError(f"plugin {target!r}: cannot import {module_name} ({err}); install it or fix the path") from err
    if not hasattr(module, attribute):
        raise RewardSpecError(f"plugin {target!r}: {module_name} has no attribute {attribute!r}")
    return getattr(module, attribute)


# ----------------------------------------------------------------------------- loading
def load_online_rewards(specs: Sequence[RewardSpec | dict], device: str | torch.device,
                        dtype: torch.dtype = torch.float32, media: str = "image") -> OnlineRewards:
    """Load every member of ``specs`` (frozen, in ``eval()`` mode) on ``device``.

    ``dtype`` is the registered rewards' (plugins keep their own). For ``media="video"`` image rewards
    are wrapped in :class:`FrameAveraged` (``frames``); video rewards and plugins take the videos.

    Raises:
        RewardSpecError: the problems :func:`check_reward_specs` finds, or a plugin without ``score``.
    """
    if media not in ("image", "video"):
        raise RewardSpecError(f"media must be 'image' or 'video', got {media!r}")
    raw = [dataclasses.asdict(s) if isinstance(s, RewardSpec) else s for s in specs]
    problems = check_reward_specs(raw, media)
    if problems:
        raise RewardSpecError("the rewards list cannot be loaded:\n" + "\n".join(f"  - {p}" for p in problems))
    specs = [RewardSpec(**s) for s in raw]
    members = [_load_member(spec, device, dtype, media) for spec in specs]
    return OnlineRewards(members, [s.weight for s in specs], [_label(m, s) for m, s in zip(members, specs)],
                         [s.batch_size for s in specs], media)


def _load_member(spec: RewardSpec, device, dtype, media: str):
    from diffalign.rewards import load_reward

    if plugin_path(spec.name) is None:
        reward = load_reward(spec.name, spec.path, dtype=dtype, device=device, **spec.options)
        return reward if media == "image" or scores_videos(reward) else FrameAveraged(reward, spec.frames)
    factory = import_plugin(plugin_path(spec.name))
    kwargs = dict(spec.options, **({"path": spec.path} if spec.path is not None else {}))
    if _takes(factory, "device"):
        kwargs["device"] = device
    member = factory(**kwargs)
    if isinstance(member, torch.nn.Module):
        member = member.to(device).eval().requires_grad_(False)
    if not callable(getattr(member, "score", None)):
        raise RewardSpecError(f"plugin {spec.name!r} made a {type(member).__name__} without a score method; it must "
                              "have score(images, prompts) or score(images, prompts, metadata) returning [n] scores")
    return member


def _takes(fn, parameter: str) -> bool:
    try:
        return parameter in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


def _label(member, spec: RewardSpec) -> str:
    """The key of a member's scores: its own label (``pickscore@frames:all``), else the spec's name."""
    label = getattr(member, "label", None)
    return label if isinstance(label, str) else spec.name


# ----------------------------------------------------------------------------- scoring
class OnlineRewards:
    """Loaded members with their weights (see :func:`load_online_rewards`).

    Attributes:
        labels: each member's key in the scores, in config order.
        weights: each member's weight in :meth:`total`.
        media: ``image`` (``[N, 3, H, W]``) or ``video`` (``[N, 3, F, H, W]`` or ``[N, F, 3, H, W]``).
    """

    def __init__(self, members: list, weights: list[float], labels: list[str], batch_sizes: list[int], media: str = "image"):
        if len(set(labels)) != len(labels):
            raise RewardSpecError(f"two members share a label in {labels}; give each reward once")
        self.members, self.weights, self.labels = members, [float(w) for w in weights], labels
        self.batch_sizes, self.media = batch_sizes, media
        self._metadata = [_takes(m.score, "metadata") for m in members]
        self._executor: ThreadPoolExecutor | None = None

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[dict] | None = None,
                 layout: str | None = None) -> dict[str, Tensor]:
        """``{label: [N] float32 on the CPU}``: each member's raw scores, in batches of its spec's size.

        Args:
            images: ``[N, 3, H, W]`` float in [0, 1]; for video, ``[N, 3, F, H, W]`` or ``[N, F, 3, H, W]``.
            prompts: ``N`` strings.
            metadata: ``N`` dicts (GenEval's records for ``geneval``) or ``None``.
            layout: ``NCFHW`` or ``NFCHW``, needed only when a video's ``F`` is 3 (either reading fits).
        """
        images = self._arranged(images, layout)
        prompts, count = list(prompts), len(images)
        if len(prompts) != count or (metadata is not None and len(metadata) != count):
            raise ScoreInputError(f"got {count} samples, {len(prompts)} prompts and "
                                  f"{'no' if metadata is None else len(metadata)} metadata; give one of each per sample")
        with torch.no_grad():
            return {label: self._member_scores(i, images, prompts, metadata) for i, label in enumerate(self.labels)}

    def total(self, scores: dict[str, Tensor]) -> Tensor:
        """``[N]`` Σ_i w_i · scores[label_i] (Flow-GRPO's ``avg``)."""
        missing = [label for label in self.labels if label not in scores]
        if missing:
            raise ScoreInputError(f"no scores for {missing}; pass what calling these rewards returned")
        return sum(w * scores[label].float() for label, w in zip(self.labels, self.weights))

    def submit(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[dict] | None = None,
               layout: str | None = None) -> Future:
        """Score in a background thread (so it overlaps the next sampling batch); the future's result is
        what calling gives. Leave ``images`` unchanged until it is done (they are not copied)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="online-rewards")
        return self._executor.submit(self, images, prompts, metadata, layout)

    def to(self, device: str | torch.device) -> OnlineRewards:
        """Move the members that are modules (the registered reward models) to ``device``; a plugin
        that is not a module stays where it is."""
        for member in self.members:
            if isinstance(member, torch.nn.Module):
                member.to(device)
        return self

    def close(self) -> None:
        """Wait for submitted scoring and stop the background thread."""
        if self._executor is not None:
            self._executor, executor = None, self._executor
            executor.shutdown(wait=True)

    def _member_scores(self, index: int, images: Tensor, prompts: list[str], metadata) -> Tensor:
        member, size, parts = self.members[index], self.batch_sizes[index], []
        for start in range(0, len(images), size):
            rows = slice(start, start + size)
            extra = (None if metadata is None else list(metadata[rows]),) if self._metadata[index] else ()
            parts.append(torch.as_tensor(member.score(images[rows], prompts[rows], *extra)).float().reshape(-1).cpu())
        scores = torch.cat(parts)
        if len(scores) != len(images):
            raise ScoreInputError(f"{self.labels[index]} gave {len(scores)} scores for {len(images)} samples")
        return scores

    def _arranged(self, images: Tensor, layout: str | None) -> Tensor:
        """Images as given, or videos frames first ``[N, F, 3, H, W]`` (what video rewards take)."""
        if not isinstance(images, Tensor) or not images.is_floating_point():
            raise ScoreInputError(f"give a float tensor in [0, 1], got {getattr(images, 'dtype', type(images).__name__)}")
        if self.media == "image":
            if images.ndim != 4 or images.shape[1] != 3:
                raise ScoreInputError(f"images must be [N, 3, H, W], got {tuple(images.shape)} (for videos load with media='video')")
            return images
        if images.ndim != 5 or 3 not in images.shape[1:3]:
            raise ScoreInputError(f"videos must be [N, 3, F, H, W] or [N, F, 3, H, W], got {tuple(images.shape)}")
        if layout is None:
            if images.shape[1] == images.shape[2]:
                raise ScoreInputError(f"videos {tuple(images.shape)} have 3 frames and 3 channels: pass layout='NCFHW' or 'NFCHW'")
            layout = "NCFHW" if images.shape[1] == 3 else "NFCHW"
        if layout not in LAYOUTS or images.shape[LAYOUTS.index(layout) + 1] != 3:
            raise ScoreInputError(f"videos {tuple(images.shape)} are not laid out as {layout!r}; give one of {LAYOUTS} "
                                  "with the channels (3) where it says C")
        channels_first = layout == "NCFHW"
        return images.transpose(1, 2) if channels_first else images


__all__ = ["BUILT_IN_PLUGINS", "OnlineRewards", "RewardSpec", "RewardSpecError", "check_reward_specs",
           "import_plugin", "load_online_rewards"]
