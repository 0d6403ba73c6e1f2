"""Tiny, offline, deterministic pipelines for every supported family.

Nothing here touches a model hub: each component is built from a config with a fixed seed and
the tokenizers from a small vocabulary written by this module. Each family's tiny configuration
lives in its family file (``tiny_kinds``, ``tiny_components``; see
:mod:`diffalign.families.builds`); this module holds the pieces they share (tokenizers, CLIP and
T5 encoders, the 2-block VAE: :mod:`diffalign.families.tiny_parts`) and saves what a family builds. ``save_tiny_pipeline`` writes an
ordinary diffusers folder (``model_index.json`` and one subfolder per component), so code under
test goes through the same ``from_pretrained`` path as it would for SDXL or SD3-Medium.

The tests use these through fixtures in ``tests/conftest.py``; the CPU demo reuses them.
``write_random_pairs`` writes a preference dataset of random-noise pairs (the training
benchmark's data, and any test that needs images with content to crop and flip);
``write_prompt_dataset`` a prompt-only dataset (``K = 0``, online RL's data).
Tiny reward models (CLIP, open_clip, BLIP) are built by :mod:`diffalign.rewards.tiny`, beside
the reward code whose layouts they mirror.

Example:
    >>> from diffalign.testing import save_tiny_pipeline
    >>> path = save_tiny_pipeline("sdxl", "/tmp/tiny-sdxl")   # doctest: +SKIP
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from diffalign.families import FAMILIES
from diffalign.families.tiny_parts import (MAX_TOKENS, clip_vocab_and_merges, tiny_clip_text_encoder,  # noqa: F401
                                             tiny_clip_tokenizer, tiny_t5_encoder, tiny_t5_tokenizer,
                                             tiny_umt5_encoder, tiny_vae)

TINY_FAMILIES = tuple(kind for family in FAMILIES.values() for kind in family.tiny_kinds)
"""Names of the tiny pipelines, as each family lists them (``tiny_kinds``): SD1.5-style (epsilon),
SD2.1-style (v), SDXL-style, SD3-style, Wan 2.1-style (text-to-video)."""

TINY_FRAMES = 5
"""Frames of the tiny Wan's videos: 1 + 4, two latent frames."""

def save_tiny_t5(path: str | os.PathLike, seed: int = 0) -> Path:
    """A tiny random T5 text-to-text model (``T5ForConditionalGeneration``, 1 encoder and 1 decoder
    layer) with the tiny tokenizer, saved as a transformers folder: the text model DCPO's caption
    perturbation takes."""
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = tiny_t5_tokenizer()
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1,
                      num_heads=4, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0)
    torch.manual_seed(seed)
    T5ForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


def family_of_kind(kind: str):
    """The family class whose tiny pipelines include ``kind`` (one of :data:`TINY_FAMILIES`)."""
    for family in FAMILIES.values():
        if kind in family.tiny_kinds:
            return family
    raise ValueError(f"unknown tiny pipeline {kind!r}; choose one of {', '.join(TINY_FAMILIES)}")


def scheduler_for(kind: str):
    """The released pipelines' scheduler settings for ``kind`` (one of :data:`TINY_FAMILIES`)."""
    return family_of_kind(kind).tiny_scheduler(kind)


def tiny_components(kind: str, seed: int = 0, with_t5: bool = True) -> tuple[type, dict]:
    """Build the components of a tiny pipeline (the family's ``tiny_components``).

    Args:
        kind: one of :data:`TINY_FAMILIES`.
        seed: every module is initialised from ``seed`` (each module re-seeds, so adding one
            component does not change the others).
        with_t5: SD3 only; ``False`` leaves ``text_encoder_3``/``tokenizer_3`` out, as users do
            to save memory.

    Returns:
        ``(pipeline_class, components)`` ready for ``pipeline_class(**components)``.
    """
    import diffusers

    family = family_of_kind(kind)
    return getattr(diffusers, family.pipeline_class), family.tiny_components(kind, seed=seed, with_t5=with_t5)


def tiny_pipeline(kind: str, seed: int = 0, with_t5: bool = True):
    """The tiny pipeline object itself (fp32, CPU), not saved anywhere."""
    cls, components = tiny_components(kind, seed=seed, with_t5=with_t5)
    return cls(**components)


def save_tiny_pipeline(kind: str, path: str | os.PathLike, seed: int = 0, with_t5: bool = True) -> Path:
    """Build a tiny pipeline and write it as a diffusers folder (safetensors weights).

    Returns:
        The folder, loadable with ``DiffusionPipeline.from_pretrained(path)`` and
        :func:`diffalign.families.load`.
    """
    path = Path(path)
    tiny_pipeline(kind, seed=seed, with_t5=with_t5).save_pretrained(path, safe_serialization=True)
    return path


def write_random_pairs(folder: Path, pairs: int, resolution: int, seed: int = 0) -> Path:
    """A preference dataset of ``pairs`` random-noise image pairs (PNG) with short prompts."""
    import numpy as np
    from PIL import Image

    from diffalign.data.writer import ShardWriter

    rng = np.random.default_rng(seed)
    writer = ShardWriter(folder, builder="benchmark", options={"pairs": pairs, "resolution": resolution},
                         shard_size=256, overwrite=True)
    for i in range(pairs):
        images = []
        for _ in range(2):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)).save(buf, "PNG")
            images.append({"bytes": buf.getvalue(), "path": None})
        writer.add({"id": f"p{i}", "prompt": f"a photo of a red cat {i}", "images": images, "scores": [1.0, 0.0],
                    "ranks": [0, 1], "captions": None, "source": "benchmark", "meta": None})
        writer.advance(i + 1)
    writer.finish({"group_size": 2})
    return folder


def write_random_video_pairs(folder: Path, pairs: int, resolution: int, frames: int = TINY_FRAMES, seed: int = 0) -> Path:
    """A video preference dataset (``media: video``) of ``pairs`` pairs of MP4 clips with short
    prompts: smooth moving colour gradients (random noise would not survive the video codec), the
    preferred clip of each pair brighter than the other. Needs the ``video`` extra (PyAV)."""
    from diffalign.data.videos import encode_video
    from diffalign.data.writer import ShardWriter

    gen = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, resolution)
    writer = ShardWriter(folder, builder="benchmark", options={"pairs": pairs, "resolution": resolution, "frames": frames},
                         shard_size=256, overwrite=True)
    for i in range(pairs):
        clips = []
        for brightness in (0.8, 0.4):
            colour = torch.rand(3, 1, 1, generator=gen)
            speed = float(torch.rand(1, generator=gen)) * 0.2
            video = torch.stack([(colour * brightness * (0.5 + 0.5 * torch.sin(6 * ramp[None, :] + speed * f))
                                  ).expand(3, resolution, resolution) for f in range(frames)])
            clips.append({"bytes": encode_video(video.clamp(0, 1)), "path": None})
        writer.add({"id": f"v{i}", "prompt": f"a video of a red cat {i}", "images": clips, "scores": [1.0, 0.0],
                    "ranks": [0, 1], "captions": None, "source": "benchmark", "meta": None})
        writer.advance(i + 1)
    writer.finish({"group_size": 2, "media": "video"})
    return folder


def write_prompt_dataset(folder: str | os.PathLike, prompts: list[str], metas: list[dict] | None = None) -> Path:
    """A prompt-only dataset (``K = 0``: ``"kind": "prompts"``, ``"group_size": 0``) of ``prompts``, in
    order, with ids ``p0``, ``p1``, ..., for tests and tiny online-RL configs.

    Args:
        folder: the dataset folder (replaced if this helper wrote it before).
        prompts: one row each.
        metas: one dict per prompt, stored as the row's ``meta`` JSON (``None``: no meta).

    Returns:
        ``folder``, readable with :meth:`~diffalign.data.dataset.PreferenceDataset.open`.
    """
    import json

    from diffalign.data.writer import ShardWriter

    if metas is not None and len(metas) != len(prompts):
        raise ValueError(f"write_prompt_dataset: {len(metas)} metas for {len(prompts)} prompts; give one per prompt")
    writer = ShardWriter(folder, builder="test-prompts", options={"prompts": len(prompts)}, shard_size=256,
                         overwrite=True, prompts_only=True)
    for i, prompt in enumerate(prompts):
        writer.add({"id": f"p{i}", "prompt": prompt, "images": [], "scores": None, "ranks": None, "captions": None,
                    "source": "testing", "meta": None if metas is None else json.dumps(metas[i])})
        writer.advance(i + 1)
    writer.finish()
    return Path(folder)


def write_handmade_dataset(folder: Path, rows: list[dict], group_size: int = 2) -> Path:
    """A preference dataset written directly, without the builders' row checks: what a user's own
    script might produce (image ``path`` values included), for tests of the readers' defences.

    Args:
        rows: dicts with ``id``, ``prompt``, ``images`` (``{"bytes", "path"}`` structs); the
            optional columns default to null and ``source`` to ``"handmade"``.
    """
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from diffalign.data.schema import DATA_DIR, FORMAT, MANIFEST, arrow_schema

    folder = Path(folder)
    (folder / DATA_DIR).mkdir(parents=True, exist_ok=True)
    full = [{"scores": None, "ranks": None, "captions": None, "source": "handmade", "meta": None, **row} for row in rows]
    pq.write_table(pa.Table.from_pylist(full, schema=arrow_schema()), folder / DATA_DIR / "shard-00000.parquet")
    manifest = {"format": FORMAT, "group_size": group_size,
                "shards": [{"file": f"{DATA_DIR}/shard-00000.parquet", "rows": len(rows)}]}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder
