"""Reading a finished latent cache (:mod:`diffalign.data.cache_layout` describes its files)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from diffalign.data.cache_layout import (
    META,
    CacheMismatchError,
    build_command,
    cache_dir,
    check_version,
    model_fingerprint,
    pad_texts,
)


class LatentCache:
    """Reads a finished cache for one model.

    Use :meth:`open`, which refuses a cache built for another family, model or resolution.
    """

    def __init__(self, folder: Path, meta: dict):
        self.folder = folder
        self.meta = meta
        self._shard: tuple[int, dict, list[str]] | None = None

    @classmethod
    def open(cls, data_root: str | Path, family, resolution: int, frames: int | None = None,
             frame_stride: int = 1) -> LatentCache:
        """The cache of ``data_root`` for a loaded ``family`` (see :meth:`for_model`)."""
        return cls.for_model(data_root, family.name, family.path, family.revision, resolution, frames, frame_stride)

    @classmethod
    def for_model(cls, data_root: str | Path, family_name: str, model_path: str, revision: str | None,
                  resolution: int, frames: int | None = None, frame_stride: int = 1) -> LatentCache:
        """The cache of ``data_root`` for a model named by its family, path and revision; needs no
        weights, so training checks it before any model loads."""
        folder = cache_dir(data_root, family_name, resolution, frames, frame_stride)
        build = build_command(data_root, model_path, resolution, frames, frame_stride)
        if not (folder / META).exists():
            raise CacheMismatchError(f"no latent cache for {family_name} at {resolution}px in {folder}; build it with {build}")
        meta = json.loads((folder / META).read_text())
        check_version(folder, meta, build)  # first: an old layout is rebuilt whether finished or not
        if not meta.get("complete"):
            raise CacheMismatchError(f"{folder} is unfinished; run {build} again to complete it")
        fingerprint = model_fingerprint(model_path, revision)
        if meta["fingerprint"] != fingerprint:
            raise CacheMismatchError(
                f"{folder} was built from {meta['model']} (revision {meta['revision']}, {meta['fingerprint']}); "
                f"this run uses {model_path} ({fingerprint}), whose VAE or text encoders differ. "
                f"Delete {folder} and rebuild it with {build}, or train with data.cache=false."
            )
        return cls(folder, meta)

    def check_compatible(self, resolution: int, rows: int, frames: int | None = None, frame_stride: int = 1) -> None:
        if self.meta.get("frames") != frames or (frames is not None and self.meta.get("frame_stride") != frame_stride):
            raise CacheMismatchError(f"{self.folder} holds clips of {self.meta.get('frames')} frames (stride "
                                     f"{self.meta.get('frame_stride')}); training asks for {frames} (stride {frame_stride})")
        if self.meta["resolution"] != resolution or self.meta["rows"] != rows:
            raise CacheMismatchError(
                f"{self.folder} holds {self.meta['rows']} rows at {self.meta['resolution']}px; "
                f"the dataset has {rows} rows and training asks for {resolution}px: the dataset changed "
                f"since the cache was built. Delete {self.folder} and run `diffalign cache` again"
            )

    def get(self, index: int) -> dict | None:
        """Cached tensors of row ``index``, or ``None`` for a row whose images could not be read
        when the cache was built.

        Returns:
            ``latent_mean``/``latent_std [K, C, h, w]``, ``original_size``/``crop_top_left [K, 2]``,
            the row's prompt's ``prompt_embeds [L, D]`` (+ ``prompt_pooled [P]``) and, in a
            captioned dataset's cache, each image's caption's ``caption_embeds [K, L, D]`` (+
            ``caption_pooled [K, P]``); the family picks the ones its step's texts name
            (:meth:`~diffalign.families.base.ModelFamily.inputs`). ``cache_id``: the row's id.
        """
        shard, offset = divmod(index, self.meta["shard_size"])
        if self._shard is None or self._shard[0] != shard:
            path = self.folder / f"shard-{shard:05d}.safetensors"
            from safetensors import safe_open

            with safe_open(str(path), "pt") as handle:
                ids = json.loads(handle.metadata()["ids"])
            tensors = load_file(str(path))
            if "text_length" in tensors:  # shards written before the trimming have their full length
                tensors["text_embeds"] = pad_texts(tensors["text_embeds"], int(tensors["text_length"][0]))
            self._shard = (shard, tensors, ids)
        _, tensors, ids = self._shard
        if not tensors["valid"][offset]:
            return None
        item = {
            "cache_id": ids[offset],
            "latent_mean": tensors["latent_mean"][offset],
            "latent_std": tensors["latent_std"][offset],
            "original_size": tensors["original_size"][offset],
            "crop_top_left": tensors["crop_top_left"][offset],
        }
        item.update(_texts(tensors, "prompt", tensors["prompt_index"][offset]))
        if self.meta["captions"]:  # every shard of a captioned dataset's cache has caption_index
            item.update(_texts(tensors, "caption", tensors["caption_index"][offset]))
        return item


def _texts(tensors: dict, name: str, index) -> dict:
    """``{name}_embeds`` (and ``{name}_pooled`` when the family has pooled embeddings) of the
    shard's texts at ``index``: a scalar gives ``[L, D]`` (and ``[P]``), ``[K]`` indices ``[K, L, D]``."""
    out = {f"{name}_embeds": tensors["text_embeds"][index]}
    if "text_pooled" in tensors:
        out[f"{name}_pooled"] = tensors["text_pooled"][index]
    return out
