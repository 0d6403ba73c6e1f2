"""Batches of preference groups for training: ``[B, K]`` images (or cached latents), prompts and
per-image captions.

Without a cache each item decodes its ``K`` images and applies the resize / flip / crop of
:mod:`diffalign.data.images`; all images of a group share the flip and the crop placement, so
a pair stays comparable. With a :class:`~diffalign.data.cache.LatentCache` it serves the cached
VAE posterior and text embeddings instead (each row's prompt's and, from a captioned dataset's
cache, each image's caption's), and never decodes an image.

A video dataset (``media: video`` in its manifest) gives ``pixels [K, 3, F, R, R]``: ``frames``
frames taken every ``frame_stride`` from each clip's start (:mod:`diffalign.data.videos`), resized
and centre-cropped; a group's clips share the flip.

A prompt-only dataset (``K = 0``, online RL) gives items without pixels or cache: the prompt, its id
and its ``meta``; the step samples the images itself.

An unreadable image (or video), or an image path that leads outside the dataset folder (never opened),
makes its item ``None``; :func:`collate_groups` leaves it out and counts it in
``batch["skipped"]``. Under ``strict=True`` it raises instead.
"""

from __future__ import annotations

import os
import random

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from diffalign.data.dataset import PreferenceDataset
from diffalign.data.images import IMAGE_ERRORS, decode, prepare
from diffalign.data.schema import SchemaError, UnsafeImagePathError, parse_meta
from diffalign.errors import DiffalignError


class UnreadableImageError(DiffalignError, RuntimeError):
    """An image that cannot be read (undecodable, missing, or its path leads outside the dataset
    folder), under ``strict=True``."""


class GroupDataset(Dataset):
    """A ``torch.utils.data.Dataset`` of preference groups.

    Args:
        data: a :class:`PreferenceDataset` or its folder.
        resolution: square side ``R`` of the training images.
        center_crop: crop the centre; ``False`` places the crop at random.
        random_flip: mirror a group left-right with probability 0.5.
        strict: raise on an unreadable image instead of skipping the group.
        seed: random crops and flips depend only on ``(seed, epoch, index)``, so they are the
            same with any number of workers and after a resume.
        cache: serve cached latents and embeddings instead of images.

    Items are dicts with ``id``, ``prompt``, ``captions`` (K strings or ``None``: which text
    conditions which image is :func:`~diffalign.data.schema.image_texts`'s decision), ``scores``/``ranks``
    (``[K]`` or ``None``), ``meta`` (the row's JSON object as a dict, or ``None``),
    ``original_size``/``crop_top_left`` (``[K, 2]``), and either ``pixels [K, 3, R, R]`` in [-1, 1]
    or the cache's tensors. A prompt-only dataset's items (``K = 0``) stop before the sizes: no
    pixels, no cache.
    """

    def __init__(self, data, resolution: int = 512, center_crop: bool = True, random_flip: bool = False,
                 strict: bool = False, seed: int = 0, cache=None, frames: int | None = None, frame_stride: int = 1):
        self.data = data if isinstance(data, PreferenceDataset) else PreferenceDataset.open(data)
        self.resolution = resolution
        self.frames = frames
        self.frame_stride = frame_stride
        if self.data.media == "video":
            if frames is None:
                raise ValueError(f"{self.data.root} holds videos: say how many frames to train on (data.frames, "
                                 "e.g. 81 for Wan 2.1's 5-second clips)")
            if not center_crop:
                raise ValueError("videos are centre-cropped: use center_crop=True (data.center_crop: true)")
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.strict = strict
        self.seed = seed
        self.epoch = 0
        self.cache = cache
        if cache is not None and self.data.prompts_only:
            raise ValueError(f"{self.data.root} holds prompts only (K = 0): there are no latents to cache; "
                             "train it uncached (data.cache: false or auto)")
        if cache is not None:
            cache.check_compatible(resolution=resolution, rows=len(self.data), frames=frames, frame_stride=frame_stride)
            if random_flip or not center_crop:
                raise ValueError("cached latents are centre-cropped and unflipped: use center_crop=True, random_flip=False")

    def set_epoch(self, epoch: int) -> None:
        """Give each epoch its own random crops and flips."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict | None:
        row = self.data[index]
        k = len(row["images"])
        if k != self.data.group_size:
            raise SchemaError(f"row {row['id']!r} has {k} images; the dataset's groups have {self.data.group_size}")
        item = {
            "index": index,
            "id": row["id"],
            "prompt": row["prompt"],
            "captions": row["captions"],
            "scores": None if row["scores"] is None else torch.tensor(row["scores"], dtype=torch.float32),
            "ranks": None if row["ranks"] is None else torch.tensor(row["ranks"], dtype=torch.long),
            "meta": parse_meta(row["meta"], row["id"]),
        }
        if self.data.prompts_only:  # online RL samples the images: nothing to decode or read from a cache
            return item
        if self.cache is not None:
            cached = self.cache.get(index)
            if cached is None:  # the cache builder could not read this group's images either
                return self._unreadable(row, "(recorded by the latent cache)")
            if cached.pop("cache_id") != row["id"]:
                raise ValueError(f"the latent cache's row {index} is not dataset row {row['id']!r}: rebuild the cache")
            return {**item, **cached}
        rng = random.Random(f"{self.seed}-{self.epoch}-{index}")
        flip = self.random_flip and rng.random() < 0.5
        if self.data.media == "video":
            return self._videos(row, item, flip)
        fraction = None if self.center_crop else (rng.random(), rng.random())
        prepared = []
        for image in row["images"]:
            try:
                prepared.append(prepare(decode(self.data.image_bytes(image)), self.resolution, flip, fraction))
            except (UnsafeImagePathError, *IMAGE_ERRORS) as err:
                return self._unreadable(row, f"({type(err).__name__}: {err})")
        item["pixels"] = torch.stack([p.pixels for p in prepared])
        item["original_size"] = torch.tensor([p.original_size for p in prepared])
        item["crop_top_left"] = torch.tensor([p.crop_top_left for p in prepared])
        return item

    def _videos(self, row: dict, item: dict, flip: bool) -> dict | None:
        """``pixels [K, 3, F, R, R]``; sizes are each clip's frame size (no crop offsets: centre crop)."""
        from diffalign.data.videos import VIDEO_ERRORS, prepare_video, read_frames

        clips, sizes = [], []
        for video in row["images"]:
            try:
                frames = read_frames(self.data.media_source(video), self.frames, self.frame_stride)
            except (UnsafeImagePathError, *VIDEO_ERRORS) as err:
                return self._unreadable(row, f"({type(err).__name__}: {err})")
            sizes.append(tuple(frames.shape[-2:]))
            pixels = prepare_video(frames, self.resolution)
            clips.append(pixels.flip(-1) if flip else pixels)
        item["pixels"] = torch.stack(clips)
        item["original_size"] = torch.tensor(sizes)
        item["crop_top_left"] = torch.zeros(len(clips), 2, dtype=torch.long)
        return item

    def _unreadable(self, row: dict, detail: str) -> None:
        if self.strict:
            raise UnreadableImageError(f"row {row['id']!r} of {self.data.root}: an image cannot be read {detail}")
        return None


def loader_workers(configured: int | None) -> int:
    """DataLoader workers: the configured number, else 4 (at most the CPU count) when training on a
    GPU and 0 on CPU (see :class:`~diffalign.config.DataConfig`)."""
    if configured is not None:
        if configured < 0:
            raise ValueError(f"data.workers must be 0 or more, got {configured}")
        return configured
    if not torch.cuda.is_available():
        return 0
    return min(4, os.cpu_count() or 1)


def collate_groups(items: list[dict | None]) -> dict:
    """Stack items into a batch; ``None`` items (unreadable images) are dropped and counted.

    Returns:
        ``indices`` (dataset rows), ``ids``, ``prompts`` (B), ``captions`` (B lists of K, or ``None`` per
        row without captions), ``metas`` (B: each row's ``meta`` as a dict, or ``None``; e.g. the
        GenEval metadata a reward reads), ``skipped`` (int), and the
        stacked tensors: ``pixels [B, K, 3, R, R]`` or the cached ``latent_mean``/``latent_std``
        ``[B, K, C, h, w]`` and text tensors, ``original_size``/``crop_top_left [B, K, 2]``,
        ``scores``/``ranks [B, K]`` (``None`` when any item lacks them).
    """
    kept = [item for item in items if item is not None]
    batch: dict = {
        "indices": [item["index"] for item in kept],
        "ids": [item["id"] for item in kept],
        "prompts": [item["prompt"] for item in kept],
        "captions": [item["captions"] for item in kept],
        "metas": [item["meta"] for item in kept],
        "skipped": len(items) - len(kept),
    }
    if not kept:
        return batch
    for key, value in kept[0].items():
        if isinstance(value, torch.Tensor) or (value is None and key in ("scores", "ranks")):
            values = [item[key] for item in kept]
            batch[key] = None if any(v is None for v in values) else torch.stack(values)
    return batch


class EpochSampler(Sampler):
    """A shuffled order that depends only on ``(seed, epoch)``, so a resumed run sees the same
    data order as an uninterrupted one (accelerate calls ``set_epoch`` through its wrapper)."""

    def __init__(self, length: int, seed: int, shuffle: bool = True):
        self.length, self.seed, self.shuffle, self.epoch = length, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.length))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length


def group_loader(groups: GroupDataset, batch_size: int, seed: int, workers: int | None = None,
                 worker_init_fn=None) -> DataLoader:
    """The training loader of ``groups``: batches of ``batch_size`` groups in :class:`EpochSampler`'s
    order, collated by :func:`collate_groups`; ``worker_init_fn`` runs in each worker process."""
    workers = loader_workers(workers)
    return DataLoader(
        groups, batch_size=batch_size, sampler=EpochSampler(len(groups), seed),
        # Not persistent_workers: workers copy the dataset when they start, and each epoch's
        # set_epoch (its crops and flips) must reach them.
        collate_fn=collate_groups, num_workers=workers, pin_memory=torch.cuda.is_available(),
        worker_init_fn=worker_init_fn if workers else None,
    )
