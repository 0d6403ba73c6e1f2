"""The latent cache's layout on disk: where a cache of a dataset lives, what its record holds,
and what a cache of a model would take, all without weights.

Layout, beside the dataset's ``data/``::

    my_prefs/cache/sdxl-1024/
      cache.json              family, model, revision, fingerprint, resolution, dtype, shards
      shard-00000.safetensors rows [0, S): latent_mean/latent_std [n, K, C, h, w],
                              original_size/crop_top_left [n, K, 2], valid [n],
                              text_embeds [U, L', D] (+ text_pooled [U, P]): the shard's U
                              distinct texts, each row's prompt and captions, encoded once,
                              without the trailing token positions that are zero in all of
                              them (L' ≤ L; text_length [1] holds L: see trim_texts);
                              prompt_index [n] into them: each row's prompt;
                              caption_index [n, K] into them: each image's caption (the
                              prompt for a row without), only in a captioned dataset's cache

A captioned dataset's cache (``"captions": true`` in ``cache.json``) thus serves both an objective
conditioned on the prompt and one conditioned on each image's caption (DCPO); the prompts cost
one embedding per distinct prompt of a shard, not one per image.

A cache records the family, resolution and a fingerprint of the VAE and text-encoder files
(:func:`model_fingerprint`), and refuses to serve another model; it records the layout's
:data:`CACHE_VERSION`, and a cache of another version is refused with the command that rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from diffalign.errors import DiffalignError

CACHE_FORMAT = "diffalign-latent-cache"
CACHE_VERSION = 2
"""The layout's version. 2: each row's prompt embedding beside its captions' (``prompt_index``);
a version-1 cache of a captioned dataset holds only the captions', so it is rebuilt, not read."""
META = "cache.json"
# What the cache depends on: everything that turns images and prompts into tensors.
FINGERPRINTED = ("vae", "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3")


def trim_texts(embeds):
    """``(embeds[:, :L'], L)``: the text states ``[U, L, D]`` without the trailing token positions
    that are zero in every text, and their full length ``L``, for :func:`pad_texts` to restore.

    Qwen-Image's states are zero-padded to 512 tokens (so prompts batch): its prompts of 20–80
    tokens stored padded are 7.3 MB each in fp32, 14 KB a token kept. CLIP's, T5's and Qwen3's
    padding states are not zero, so nothing of theirs is trimmed.
    """
    if embeds.dim() != 3:  # a shard without texts: ``[0]``
        return embeds, 0
    used = embeds.ne(0).any(dim=2).any(dim=0).nonzero()
    keep = int(used.max()) + 1 if len(used) else 1
    return embeds[:, :keep], embeds.shape[1]


def pad_texts(embeds, length: int):
    """:func:`trim_texts` undone: ``embeds [U, L', D]`` zero-padded to ``[U, length, D]``, bit for bit
    the states the family encoded."""
    import torch

    if embeds.dim() != 3 or embeds.shape[1] >= length:
        return embeds
    return torch.cat([embeds, embeds.new_zeros(embeds.shape[0], length - embeds.shape[1], embeds.shape[2])], dim=1)


class CacheMismatchError(DiffalignError, ValueError):
    """A cache built for another model, resolution or dataset."""


def cache_dir(data_root: str | Path, family_name: str, resolution: int, frames: int | None = None,
              frame_stride: int = 1) -> Path:
    """``DATA/cache/<family>-<resolution>``; a video cache adds its clip: ``-<frames>f`` (and ``s<stride>``)."""
    clip = "" if frames is None else f"-{frames}f" + (f"s{frame_stride}" if frame_stride != 1 else "")
    return Path(data_root) / "cache" / f"{family_name}-{resolution}{clip}"


def build_command(data_root: str | Path, model_path: str, resolution: int, frames: int | None = None,
                  frame_stride: int = 1) -> str:
    """The ``diffalign cache`` command that builds the cache of ``data_root`` for this model and clip."""
    clip = "" if frames is None else f" --frames {frames}" + (f" --frame-stride {frame_stride}" if frame_stride != 1 else "")
    return f"`diffalign cache {data_root} --model {model_path} --resolution {resolution}{clip}`"


def check_version(folder: Path, meta: dict, build: str) -> None:
    """Refuse a cache whose ``cache.json`` (``meta``) records another layout version than this
    diffalign's: read with today's layout, an older cache would hand out the wrong tensors (a
    version-1 captioned cache has no prompt embeddings). ``build`` is the command that rebuilds it.

    Raises:
        CacheMismatchError: naming the folder to delete and the command to run.
    """
    found = meta.get("version")
    if found != CACHE_VERSION:
        raise CacheMismatchError(
            f"{folder} holds a latent cache of layout version {found}, and this diffalign reads version "
            f"{CACHE_VERSION} (which also stores each row's prompt embedding beside its captions'). "
            f"Delete {folder} and rebuild it with {build}, or train with data.cache=false."
        )


def cache_bytes(model_path: str, revision: str | None, resolution: int, frames: int | None, images: int) -> int:
    """What a cache's latents take on disk for ``images`` images (or clips): the posterior's mean
    and std, fp32, one latent each (its size read from the VAE's config by the families, no
    weights; the prompt embeddings come on top)."""
    from diffusers import AutoencoderKL

    from diffalign.families.base import vae_latent_numel

    vae = AutoencoderKL.load_config(model_path, subfolder="vae", revision=revision)
    return images * 2 * 4 * vae_latent_numel(vae, resolution, frames)


def model_fingerprint(path: str, revision: str | None = None) -> str:
    """Identify the VAE and text encoders of a checkpoint.

    A local folder hashes each relevant file's name, size, first and last MiB (cheap for
    multi-GB weights, yet changes when weights change). A hub id is pinned to the commit its
    snapshot resolves to.
    """
    local = Path(path).expanduser()
    if local.is_dir():
        digest = hashlib.sha256()
        for folder in FINGERPRINTED:
            for file in sorted((local / folder).rglob("*")) if (local / folder).is_dir() else []:
                if file.is_file():
                    digest.update(f"{file.relative_to(local)}:{file.stat().st_size}".encode())
                    with open(file, "rb") as handle:
                        digest.update(handle.read(1 << 20))
                        handle.seek(max(0, file.stat().st_size - (1 << 20)))
                        digest.update(handle.read())
        return f"sha256:{digest.hexdigest()}"
    from huggingface_hub import snapshot_download

    snapshot = snapshot_download(str(path), revision=revision, allow_patterns=["model_index.json"])
    return f"hub:{path}@{Path(snapshot).name}"


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds a finished cache (its record says so)."""
    try:
        return bool(json.loads((folder / META).read_text()).get("complete"))
    except (OSError, ValueError):
        return False
