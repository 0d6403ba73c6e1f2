"""Tiny, offline, deterministic pipelines for every supported family.

Nothing here touches a model hub: each component is built from a config with a fixed seed and
the tokenizers from a small vocabulary written by this module. ``save_tiny_pipeline`` writes an
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

TINY_FAMILIES = ("sd15", "sd21", "sdxl", "sd3", "wan")
"""Names of the tiny pipelines: SD1.5-style (epsilon), SD2.1-style (v), SDXL-style, SD3-style,
Wan 2.1-style (text-to-video)."""

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
    """A 2-block ``AutoencoderKL`` (downsamples ×2); SD3 passes its ``shift_factor``."""
    from diffusers import AutoencoderKL

    _seeded(seed)
    kwargs = {"shift_factor": shift_factor} if shift_factor is not None else {}
    return AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4, sample_size=32, scaling_factor=0.5, **kwargs,
    ).eval()


def tiny_unet(cross_attention_dim: int = 32, sdxl: bool = False, seed: int = 0):
    """A two-level ``UNet2DConditionModel``; ``sdxl=True`` adds the ``text_time`` conditioning
    (6 time ids × ``addition_time_embed_dim`` + the pooled text embedding)."""
    from diffusers import UNet2DConditionModel

    extra = {}
    if sdxl:
        extra = dict(
            addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + cross_attention_dim,
            attention_head_dim=(2, 4), use_linear_projection=True,
        )
    _seeded(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, **extra,
    )


def tiny_sd3_transformer(seed: int = 0):
    """A 1-layer ``SD3Transformer2DModel`` over 4-channel latents, patch size 1 (joint dim 32)."""
    from diffusers import SD3Transformer2DModel

    _seeded(seed)
    return SD3Transformer2DModel(
        sample_size=16, patch_size=1, in_channels=4, out_channels=4, num_layers=1,
        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=32,
        caption_projection_dim=32, pooled_projection_dim=32, pos_embed_max_size=32,
    )


def tiny_wan_vae(seed: int = 0):
    """The tiny ``AutoencoderKLWan`` of diffusers' own Wan tests (×8 spatial, ×4 temporal, 16
    channels, the released per-channel ``latents_mean``/``latents_std``)."""
    from diffusers import AutoencoderKLWan

    _seeded(seed)
    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True]).eval()


def tiny_wan_transformer(seed: int = 0):
    """A 2-layer ``WanTransformer3DModel`` (diffusers' test configuration: 2 heads × 12, text width 32)."""
    from diffusers import WanTransformer3DModel

    _seeded(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )


def scheduler_for(kind: str):
    """The released pipelines' scheduler settings for ``kind`` (one of :data:`TINY_FAMILIES`)."""
    import diffusers

    # Schedulers keep CPU tensors: build them on the CPU even under a meta/cuda device context.
    with torch.device("cpu"):
        if kind in ("sd15", "sd21"):
            return diffusers.DDPMScheduler(
                beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                steps_offset=1, clip_sample=False, prediction_type="epsilon" if kind == "sd15" else "v_prediction",
            )
        if kind == "sdxl":
            return diffusers.EulerDiscreteScheduler(
                beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                prediction_type="epsilon", timestep_spacing="leading", steps_offset=1,
            )
        if kind == "sd3":
            return diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
        if kind == "wan":
            # What the released Wan 2.1 folders ship (diffusers' convert_wan_to_diffusers.py, 480p).
            return diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                     num_train_timesteps=1000, flow_shift=3.0)
    raise ValueError(f"unknown tiny pipeline {kind!r}; choose one of {', '.join(TINY_FAMILIES)}")


def tiny_components(kind: str, seed: int = 0, with_t5: bool = True) -> tuple[type, dict]:
    """Build the components of a tiny pipeline.

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

    scheduler = scheduler_for(kind)
    if kind in ("sd15", "sd21"):
        return diffusers.StableDiffusionPipeline, dict(
            unet=tiny_unet(seed=seed), vae=tiny_vae(seed=seed), scheduler=scheduler,
            text_encoder=tiny_clip_text_encoder(seed=seed), tokenizer=tiny_clip_tokenizer(),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    if kind == "sdxl":
        return diffusers.StableDiffusionXLPipeline, dict(
            # The UNet's cross-attention width is the two encoders' hidden sizes concatenated
            # (16 + 16); its pooled input is text_encoder_2's projection (32).
            unet=tiny_unet(cross_attention_dim=32, sdxl=True, seed=seed), vae=tiny_vae(seed=seed),
            scheduler=scheduler, text_encoder=tiny_clip_text_encoder(hidden=16, seed=seed),
            text_encoder_2=tiny_clip_text_encoder(hidden=16, projection=32, seed=seed + 1),
            tokenizer=tiny_clip_tokenizer(), tokenizer_2=tiny_clip_tokenizer(),
        )
    if kind == "sd3":
        components = dict(
            transformer=tiny_sd3_transformer(seed=seed),
            vae=tiny_vae(shift_factor=0.0609, seed=seed), scheduler=scheduler,
            # CLIP hidden states (16 + 16) are padded to the T5 width (32); pooled = 16 + 16.
            text_encoder=tiny_clip_text_encoder(hidden=16, projection=16, seed=seed),
            text_encoder_2=tiny_clip_text_encoder(hidden=16, projection=16, seed=seed + 1),
            tokenizer=tiny_clip_tokenizer(), tokenizer_2=tiny_clip_tokenizer(),
            text_encoder_3=tiny_t5_encoder(seed=seed) if with_t5 else None,
            tokenizer_3=tiny_t5_tokenizer() if with_t5 else None,
        )
        return diffusers.StableDiffusion3Pipeline, components
    if kind == "wan":
        return diffusers.WanPipeline, dict(
            transformer=tiny_wan_transformer(seed=seed), vae=tiny_wan_vae(seed=seed), scheduler=scheduler,
            text_encoder=tiny_umt5_encoder(seed=seed), tokenizer=tiny_t5_tokenizer(),
        )
    raise ValueError(f"unknown tiny pipeline {kind!r}; choose one of {', '.join(TINY_FAMILIES)}")


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
