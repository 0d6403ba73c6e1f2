"""Tiny, offline, deterministic pipelines for every supported family.

Nothing here touches a model hub: each component is built from a config with a fixed seed and
the tokenizers from a small vocabulary written by this module. Each family's tiny configuration
lives in its family file (``tiny_kinds``, ``tiny_components``; see
:mod:`diffalign.families.builds`); this module holds the pieces they share (tokenizers, CLIP and
T5 encoders, the 2-block VAE) and saves what a family builds. ``save_tiny_pipeline`` writes an
ordinary diffusers folder (``model_index.json`` and one subfolder per component), so code under
test goes through the same ``from_pretrained`` path as it would for SDXL or SD3-Medium.

The tests use these through fixtures in ``tests/conftest.py``; the CPU demo reuses them.
``write_random_pairs`` writes a preference dataset of random-noise pairs (the training
benchmark's data, and any test that needs images with content to crop and flip).
Tiny reward models (CLIP, open_clip, BLIP) are built by :mod:`diffalign.rewards.tiny`, beside
the reward code whose layouts they mirror.

Example:
    >>> from diffalign.testing import save_tiny_pipeline
    >>> path = save_tiny_pipeline("sdxl", "/tmp/tiny-sdxl")   # doctest: +SKIP
"""

from __future__ import annotations

import io
import os
import string
from pathlib import Path

import torch

from diffalign.families import FAMILIES

TINY_FAMILIES = tuple(kind for family in FAMILIES.values() for kind in family.tiny_kinds)
"""Names of the tiny pipelines, as each family lists them (``tiny_kinds``): SD1.5-style (epsilon),
SD2.1-style (v), SDXL-style, SD3-style, Wan 2.1-style (text-to-video)."""

TINY_FRAMES = 5
"""Frames of the tiny Wan's videos: 1 + 4, two latent frames."""

MAX_TOKENS = 77  # CLIP's context length; the tiny encoders keep it so truncation behaves as in SD.

# A few words get their own BPE merges so prompts tokenise into realistic whole-word tokens;
# everything else still tokenises byte by byte, so no prompt is ever out of vocabulary.
_WORDS = (
    "a an the of on in with and photo painting picture image cat dog red blue green yellow "
    "black white circle square triangle small large big tree house car sky man woman"
).split()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable-unicode table (the BPE alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """A small CLIP BPE vocabulary: the 256 byte symbols, their end-of-word forms, and merges
    that spell the words of ``_WORDS``.

    Returns:
        ``(vocab, merges)``: token → id (specials first: ``<|startoftext|>`` = 0,
        ``<|endoftext|>`` = 1) and merge rules ``"a b"`` in priority order.
    """
    alphabet = list(_bytes_to_unicode().values())
    tokens = ["<|startoftext|>", "<|endoftext|>"] + alphabet + [c + "</w>" for c in alphabet]
    merges: list[str] = []
    for word in _WORDS:
        # Merge left to right; the last symbol carries the end-of-word marker, as in CLIP.
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            rule = f"{pieces[0]} {pieces[1]}"
            merged = pieces[0] + pieces[1]
            if rule not in merges:
                merges.append(rule)
            if merged not in tokens:
                tokens.append(merged)
            pieces = [merged] + pieces[2:]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def tiny_clip_tokenizer():
    """A ``CLIPTokenizer`` over :func:`clip_vocab_and_merges` (77 tokens, pads with EOS)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    pairs = [tuple(rule.split(" ")) for rule in merges]
    return CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=MAX_TOKENS)


def tiny_t5_tokenizer():
    """A ``T5Tokenizer`` (unigram) over lower-case letters, digits and the words of ``_WORDS``."""
    from transformers import T5Tokenizer

    pieces = ["<pad>", "</s>", "<unk>", "▁"]
    pieces += sorted(set(string.ascii_lowercase + string.digits + ".,!?-"))
    pieces += ["▁" + w for w in _WORDS]
    # Whole words score higher than characters so the unigram model prefers them.
    vocab = [(p, 0.0) for p in pieces[:3]] + [(p, -1.0 if p.startswith("▁") else -5.0) for p in pieces[3:]]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=MAX_TOKENS)


def _seeded(seed: int):
    torch.manual_seed(seed)


def tiny_clip_text_encoder(hidden: int = 32, projection: int | None = None, seed: int = 0):
    """A 2-layer CLIP text encoder; with ``projection`` it also returns ``text_embeds`` (pooled)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    vocab, _ = clip_vocab_and_merges()
    config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"], projection_dim=projection or hidden, hidden_act="gelu",
    )
    _seeded(seed)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(config).eval()


def tiny_t5_encoder(d_model: int = 32, seed: int = 0, umt5: bool = False):
    """A 1-layer T5 encoder whose width matches the SD3 transformer's ``joint_attention_dim``
    (``umt5``: the UMT5 class Wan uses, same configuration)."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    config_cls, model_cls = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    config = config_cls(
        vocab_size=len(tiny_t5_tokenizer()), d_model=d_model, d_kv=8, d_ff=2 * d_model,
        num_layers=1, num_heads=4, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )
    _seeded(seed)
    return model_cls(config).eval()


def save_tiny_t5(path: str | os.PathLike, seed: int = 0) -> Path:
    """A tiny random T5 text-to-text model (``T5ForConditionalGeneration``, 1 encoder and 1 decoder
    layer) with the tiny tokenizer, saved as a transformers folder: the text model DCPO's caption
    perturbation takes."""
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = tiny_t5_tokenizer()
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1,
                      num_heads=4, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0)
    _seeded(seed)
    T5ForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


def tiny_umt5_encoder(d_model: int = 32, seed: int = 0):
    """A 1-layer UMT5 encoder (Wan's text encoder class) over the tiny T5 vocabulary."""
    return tiny_t5_encoder(d_model, seed, umt5=True)


def tiny_vae(latent_channels: int = 4, shift_factor: float | None = None, seed: int = 0):
    """A 2-block ``AutoencoderKL`` (downsamples ×2), the SD-style families' tiny VAE; SD3 passes
    its ``shift_factor``."""
    from diffusers import AutoencoderKL

    _seeded(seed)
    kwargs = {"shift_factor": shift_factor} if shift_factor is not None else {}
    return AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4, sample_size=32, scaling_factor=0.5, **kwargs,
    ).eval()


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
