"""The latent cache: VAE posteriors and prompt embeddings computed once, so training never loads
the VAE encoder or the text encoders. This module builds caches (and is ``diffalign cache``);
:mod:`.cache_layout` holds where a cache lives and what its files hold, :mod:`.cache_reader`
serves a finished one to training. Their public names are importable from here too.

The cache keeps the posterior's mean and std rather than one sample, so cached training draws
a fresh latent each step exactly as uncached training does (and the same generator gives the
same latents either way). It holds the embedding of each row's prompt and, for a captioned
dataset, of each image's caption, so one cache serves objectives conditioned on either (the
family picks what its step asks for). Texts are de-duplicated per shard: a Pick-a-Pic pair stores
its prompt's embedding once, a captioned pair its prompt's and its two captions'.

Shards are written atomically and skipped when present, so a killed run continues; shards are
split across processes under ``accelerate launch``.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from diffalign.arguments import COUNT, SIDE
from diffalign import stopping
from diffalign.config import torch_dtype
from diffalign.data.cache_layout import (  # noqa: F401  (re-exported: training and tests import them from here)
    CACHE_FORMAT,
    CACHE_VERSION,
    FINGERPRINTED,
    META,
    CacheMismatchError,
    build_command,
    cache_bytes,
    cache_dir,
    check_version,
    is_complete,
    model_fingerprint,
    trim_texts,
)
from diffalign.data.cache_reader import LatentCache  # noqa: F401  (re-exported)
from diffalign.data.dataset import PreferenceDataset
from diffalign.data.loader import GroupDataset
from diffalign.data.schema import image_texts
from diffalign.data.writer import atomic_write_json


def _encode_shard(family, groups: GroupDataset, rows: range, batch_size: int, dtype: torch.dtype,
                  captions: bool) -> tuple[dict, dict]:
    """Encode rows of the dataset; returns (tensors, metadata) of one shard.

    Args:
        captions: the dataset has captions (some row's ``captions`` is not null): the shard also
            stores ``caption_index [n, K]``, each image's caption (the prompt for a row without).

    Returns:
        Tensors ``valid [n]``, ``latent_mean``/``latent_std [n, K, C, h, w]``,
        ``original_size``/``crop_top_left [n, K, 2]``, ``text_embeds [U, L, D]`` (+ ``text_pooled
        [U, P]``) of the shard's distinct texts, ``prompt_index [n]`` (+ ``caption_index [n, K]``)
        into them, ``text_length [1]``, the texts' token count before
        :func:`~diffalign.data.cache_layout.trim_texts`; metadata ``ids``, the rows' ids (JSON).
    """
    items = [groups[i] for i in rows]
    valid = torch.tensor([item is not None for item in items])
    k = groups.data.group_size
    present = [item for item in items if item is not None]
    unique, prompt_index, caption_index = _text_indices(items, k)
    means, stds = [], []
    for start in range(0, len(present), batch_size):
        chunk = present[start:start + batch_size]
        mean, std = family.encode_posterior(torch.stack([item["pixels"] for item in chunk]))
        means.append(mean.float().cpu())
        stds.append(std.float().cpu())
    embeds, pooled = _encode_texts(family, unique, batch_size)
    embeds, text_length = trim_texts(embeds)
    tensors = {
        "valid": valid.to(torch.uint8),
        "prompt_index": prompt_index,
        "latent_mean": _scatter(means, valid),
        "latent_std": _scatter(stds, valid),
        "original_size": _scatter([torch.stack([i["original_size"] for i in present])] if present else [], valid, torch.long),
        "crop_top_left": _scatter([torch.stack([i["crop_top_left"] for i in present])] if present else [], valid, torch.long),
        "text_embeds": embeds,
        # A tensor, not metadata: safetensors writes a metadata dict in no fixed order, and a
        # rebuilt shard must be the same bytes.
        "text_length": torch.tensor([text_length]),
    }
    if captions:
        tensors["caption_index"] = caption_index
    if pooled is not None:
        tensors["text_pooled"] = pooled
    tensors = {name: t.to(dtype) if t.is_floating_point() else t for name, t in tensors.items()}
    ids = [groups.data[i]["id"] for i in rows]
    return {n: t.contiguous() for n, t in tensors.items()}, {"ids": json.dumps(ids)}


def _text_indices(items: list[dict | None], k: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The distinct texts of a shard's ``n`` loader items (``None``: unreadable) and where each row's
    are among them.

    Returns:
        ``(unique [U], prompt_index [n], caption_index [n, K])``: each row's prompt, each image's
        caption (the prompt for a row without captions); an unreadable row points at text 0, which
        the reader never looks up (it returns ``None`` for that row).
    """
    per_image = [None if item is None else
                 image_texts(item["prompt"], item["captions"], k, item["captions"] is not None) for item in items]
    # Each row's prompt, then its images' texts: an uncaptioned row's are its prompt again and add
    # nothing; a captioned row adds its distinct captions.
    unique = list(dict.fromkeys(t for item, row in zip(items, per_image) if item is not None
                                for t in (item["prompt"], *row)))
    position = {text: i for i, text in enumerate(unique)}
    prompt_index = torch.tensor([0 if item is None else position[item["prompt"]] for item in items], dtype=torch.long)
    caption_index = torch.tensor([[0] * k if row is None else [position[t] for t in row] for row in per_image],
                                 dtype=torch.long).view(len(items), k)
    return unique, prompt_index, caption_index


def _encode_texts(family, texts: list[str], batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``texts`` through the family's text encoders, ``batch_size`` at a time: ``(embeds [U, L, D],
    pooled [U, P] or None)`` in fp32 on the CPU (``embeds`` empty, ``[0]``, for no texts)."""
    embeds, pooled = [], []
    for start in range(0, len(texts), batch_size):
        cond = family.encode_prompts(texts[start:start + batch_size])
        embeds.append(cond.prompt_embeds[:, 0].float().cpu())
        if cond.pooled is not None:
            pooled.append(cond.pooled[:, 0].float().cpu())
    return (torch.cat(embeds) if embeds else torch.zeros(0)), (torch.cat(pooled) if pooled else None)


def _scatter(parts: list[torch.Tensor], valid: torch.Tensor, dtype=None) -> torch.Tensor:
    """Rows of the valid items placed at their positions; invalid rows are zeros."""
    if not parts:
        return torch.zeros(len(valid), dtype=dtype or torch.float32)
    stacked = torch.cat(parts)
    out = torch.zeros(len(valid), *stacked.shape[1:], dtype=dtype or stacked.dtype)
    out[valid] = stacked.to(out.dtype)
    return out


def build_cache(data_root: str | Path, family, *, resolution: int, batch_size: int = 8, shard_size: int | None = None,
                dtype: str | None = None, progress: bool = True, frames: int | None = None,
                frame_stride: int = 1) -> Path:
    """Encode a dataset's images, prompts and captions once with ``family``'s VAE and text encoders
    (:mod:`.cache_layout` lists what a shard holds).

    Resumable (finished shards are kept) and split across ``accelerate`` processes by shard. On
    SIGTERM or SIGINT every process finishes the shard it is writing and the build stops with
    :class:`~diffalign.errors.Stopped`; the same command continues it.

    Args:
        data_root: a preference dataset folder.
        family: a loaded :class:`~diffalign.families.ModelFamily` with its VAE and text encoders.
        resolution: the training resolution (centre crop, no flip).
        batch_size: images per VAE/text-encoder call.
        shard_size: dataset rows per cache shard (``None``: an unfinished cache's own, else 256).
        dtype: ``fp32``, ``fp16`` or ``bf16`` storage (``None``: an unfinished cache's own, else fp32).
        frames, frame_stride: a video dataset's clip: frames per clip, taken every ``frame_stride``.

    Returns:
        The cache folder.
    """
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    data = PreferenceDataset.open(data_root)
    from diffalign.families.base import untileable

    why = untileable(resolution, family.pixel_multiple(family.path, family.revision), family.path)
    if why:
        raise CacheMismatchError(f"--resolution {why}")
    out = cache_dir(data_root, family.name, resolution, frames, frame_stride)
    # Unset, the layout is the one an unfinished build began with, so it continues.
    begun = json.loads((out / META).read_text()) if (out / META).exists() else {}
    shard_size = shard_size or begun.get("shard_size", 256)
    dtype = dtype or begun.get("dtype", "fp32")
    meta = {
        "format": CACHE_FORMAT, "version": CACHE_VERSION, "family": family.name, "model": family.path,
        "revision": family.revision, "fingerprint": model_fingerprint(family.path, family.revision),
        "resolution": resolution, "dtype": dtype, "rows": len(data), "group_size": data.group_size,
        "shard_size": shard_size, "shards": math.ceil(len(data) / shard_size),
        "frames": frames, "frame_stride": frame_stride if frames is not None else None,
        # Whether the shards hold caption_index: decided once for the dataset, so every shard
        # (and every process's) agrees and the reader serves the same keys for every row.
        "captions": any(c is not None for c in data.column("captions")),
    }
    with _locked(out, state):
        return _build(out, meta, data, family, state, resolution, batch_size, progress, frames, frame_stride)


@contextmanager
def _locked(out: Path, state):
    """The cache folder's lock for the whole build (taken by the main process, agreed by all): a
    second ``diffalign cache`` or ``data.cache: auto`` run on the same cache is refused instead of
    doing the same work again."""
    from diffalign.outputs import FolderLock, OutputError

    lock = FolderLock(out, what="the latent cache")
    held = [lock.acquire() if state.is_main_process else True]
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(held)
    if not held[0]:
        raise OutputError(_busy(out, lock.holder()))
    try:
        yield
    finally:
        lock.release()


def check_buildable(folder: Path) -> None:
    """Before any model loads: a build may write the cache ``folder`` when it is new, empty or a
    cache (its ``cache.json``), and no other command is building it (the rule of
    :mod:`diffalign.outputs`; ``diffalign cache`` and ``data.cache: auto`` both ask).

    Raises:
        OutputError: naming what stands there, or who holds the folder.
    """
    from diffalign.outputs import FolderLock, OutputError, refuse_unless_empty

    if not (folder / META).exists():
        refuse_unless_empty(folder, "the latent cache", "latent cache (no cache.json)")
    holder = FolderLock(folder).holder()
    if holder is not None:
        raise OutputError(_busy(folder, holder))


def _busy(folder: Path, holder: str | None) -> str:
    return f"the latent cache {folder} is being built by another command ({holder}); wait for it to end: a later run " \
           "reuses what it built"


def _build(out: Path, meta: dict, data, family, state, resolution, batch_size, progress, frames, frame_stride) -> Path:
    """The body of :func:`build_cache`, under the folder's lock."""
    shard_size, dtype = meta["shard_size"], meta["dtype"]
    # Every process checks (so none is left waiting on one that raised); only the main one writes.
    if (out / META).exists():
        found = json.loads((out / META).read_text())
        # An older layout is named as such (with the command), not as a list of differing fields.
        check_version(out, found, build_command(out.parent.parent, meta["model"], resolution, frames, frame_stride))
        differs = {k: (found.get(k), v) for k, v in meta.items() if found.get(k) != v}
        if differs:
            raise CacheMismatchError(f"{out} holds a cache built differently (found, wanted): {differs}; delete it to rebuild")
    elif state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / META, {**meta, "complete": False})
    state.wait_for_everyone()
    groups = GroupDataset(data, resolution=resolution, center_crop=True, random_flip=False, frames=frames,
                          frame_stride=frame_stride)
    # Round r: process p writes shard r·P + p. Every process runs every round, so all of them can
    # agree after each one whether a stop was asked for (a collective).
    rounds = math.ceil(meta["shards"] / state.num_processes)
    with stopping.stop_requests(), tqdm(total=len(data), unit=" groups", desc=f"cache {family.name}",
                                        disable=not progress or not state.is_main_process) as bar:
        for r in range(rounds):
            shard = r * state.num_processes + state.process_index
            rows = range(shard * shard_size, min((shard + 1) * shard_size, len(data)))
            path = out / f"shard-{shard:05d}.safetensors"
            if shard < meta["shards"] and not path.exists():
                tensors, metadata = _encode_shard(family, groups, rows, batch_size, torch_dtype(dtype),
                                                  meta["captions"])
                tmp = out / f".{path.name}.tmp"
                save_file(tensors, str(tmp), metadata=metadata)
                os.replace(tmp, path)
            bar.update(min(shard_size * state.num_processes, len(data) - r * shard_size * state.num_processes))
            if r + 1 < rounds and stopping.agreed():
                done = sum((out / f"shard-{s:05d}.safetensors").exists() for s in range(meta["shards"]))
                raise stopping.stopped(f"{done} of {meta['shards']} cache shards are written in {out}; run the same "
                                       "command again to continue")
    state.wait_for_everyone()
    if state.is_main_process:
        missing = [s for s in range(meta["shards"]) if not (out / f"shard-{s:05d}.safetensors").exists()]
        atomic_write_json(out / META, {**meta, "complete": not missing})
    state.wait_for_everyone()
    return out


# ---------------------------------------------------------------------------------- command line
def add_arguments(parser) -> None:
    """The options of ``diffalign cache``."""
    from diffalign.config import DTYPE_NAMES
    from diffalign.families import FAMILIES

    parser.add_argument("data", help="preference dataset folder (the cache goes to DATA/cache/<family>-<resolution>)")
    parser.add_argument("--model", required=True, help="diffusers pipeline folder or hub id whose VAE and text encoders to use")
    parser.add_argument("--revision", default=None, help="hub revision of --model")
    parser.add_argument("--family", choices=list(FAMILIES), default=None, help="force the family (default: detected)")
    parser.add_argument("--resolution", type=SIDE, default=512, help="training resolution; images are centre-cropped (default: 512)")
    parser.add_argument("--frames", type=COUNT, default=None, help="video datasets: frames per clip (Wan: 1 + 4n, e.g. 81)")
    parser.add_argument("--frame-stride", type=COUNT, default=1, help="video datasets: take every n-th frame (default: 1)")
    parser.add_argument("--batch-size", type=COUNT, default=8, help="images per encoder call (default: 8)")
    parser.add_argument("--shard-size", type=COUNT, default=256, help="dataset rows per cache shard (default: 256)")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32", help="storage dtype of the cached tensors (default: fp32)")
    parser.add_argument("--model-dtype", choices=DTYPE_NAMES, default="fp32", help="dtype the encoders run in (default: fp32)")
    parser.add_argument("--no-t5", action="store_true", help="SD3: leave the T5 encoder out (its tokens are zeros)")
    parser.add_argument("--max-sequence-length", type=COUNT, default=None,
                        help="T5 tokens (default: the pipeline's own, 256 for SD3, 512 for Wan)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    """Run ``diffalign cache`` from parsed arguments: the dataset, the output folder, the size and
    the disk are checked before the model loads."""
    from accelerate import PartialState

    from diffalign.families import FAMILIES, detect_family, load
    from diffalign.families.base import untileable
    from diffalign.outputs import check_apart
    from diffalign.resources import require_disk

    state = PartialState(cpu=not torch.cuda.is_available())
    data = PreferenceDataset.open(args.data)
    family_name = args.family or detect_family(args.model, args.revision).family
    why = untileable(args.resolution, FAMILIES[family_name].pixel_multiple(args.model, args.revision), args.model)
    if why:
        raise CacheMismatchError(f"--resolution {why}")
    out = cache_dir(args.data, family_name, args.resolution, args.frames, args.frame_stride)
    check_apart(out, {"--model": args.model}, "the latent cache")
    check_buildable(out)
    if not is_complete(out):
        need = cache_bytes(args.model, args.revision, args.resolution, args.frames, len(data) * data.group_size)
        require_disk(need, args.data, f"the latent cache {out}", "free space there first")
    family = load(args.model, family=args.family, revision=args.revision, dtype=torch_dtype(args.model_dtype),
                  device=state.device, use_t5=not args.no_t5, max_sequence_length=args.max_sequence_length)
    out = build_cache(args.data, family, resolution=args.resolution, batch_size=args.batch_size,
                      shard_size=args.shard_size, dtype=args.dtype, progress=not args.no_progress,
                      frames=args.frames, frame_stride=args.frame_stride)
    if state.is_main_process:
        print(f"latent cache written to {out}")
    return 0
