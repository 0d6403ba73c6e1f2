"""What a family builds without a checkpoint: the tiny offline pipelines of :mod:`diffalign.testing`
and the real-size random-weight pipelines of the GPU benchmarks (:mod:`diffalign.benchmarks.real_size`).

Each family file fills the hooks of :class:`Builds` with its own configurations, so the tests,
the toy starter and the benchmarks ask the family instead of keeping a table per family. The
shared pieces live here (the released text encoders' and VAE's published configs) or in
:mod:`diffalign.testing` (the tiny tokenizers, CLIP/T5 encoders and 2-block VAE).

Determinism: every tiny module re-seeds from ``seed`` before it is built, so a family's tiny
weights never depend on what was built before it. The real-size modules draw from the global
generator in the order the hooks build them (seeded once by ``save_real_size_pipeline``), so a
hook must keep its order of construction.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from diffalign.families.loading import FamilyError

# Published configs shared by several families (the released checkpoints' config.json files).
SD_VAE = dict(
    in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
)
"""The ×8 ``AutoencoderKL`` of SD1.5, SDXL and SD3 (each family adds its channels and scaling)."""
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
CLIP_BIGG = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                 num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", dense_act_fn="gelu_new",
              is_gated_act=True, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def random_clip(config: dict, projection: bool):
    """A randomly initialised CLIP text encoder of ``config`` (with ``projection``: the pooled
    ``text_embeds`` too), with the special-token ids of the tiny tokenizer, whose ids fit every
    CLIP vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from diffalign.families.tiny_parts import clip_vocab_and_merges

    vocab, _ = clip_vocab_and_merges()
    ids = dict(bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(CLIPTextConfig(**config, **ids)).eval()


class Builds:
    """The build hooks of a :class:`~diffalign.families.base.ModelFamily` (all class methods: no
    checkpoint is involved). A family without tiny or real-size pipelines leaves them unset."""

    tiny_kinds: ClassVar[tuple[str, ...]] = ()
    """Names of this family's tiny pipelines (``diffalign.testing.save_tiny_pipeline(kind, ...)``),
    its most common configuration first; e.g. SD's ``("sd15", "sd21")``: epsilon and v prediction."""
    real_sizes: ClassVar[tuple[str, ...]] = ()
    """The ``--size`` values :meth:`real_size_components` builds: ``"real"`` (the released
    architecture) and, for some, ``"mini"`` (the same proportions at a fraction of the widths)."""
    real_size_resolution: ClassVar[int | None] = None
    """Pixels per side the released checkpoint trains at (the benchmarks' default resolution)."""

    @classmethod
    def tiny_scheduler(cls, kind: str):
        """The released pipelines' scheduler settings for the tiny pipeline ``kind`` (the real-size
        pipelines use those of :attr:`tiny_kinds`' first)."""
        if kind not in cls.tiny_kinds:
            has = f"tiny pipelines are {', '.join(cls.tiny_kinds)}" if cls.tiny_kinds else "has no tiny pipelines"
            raise FamilyError(f"the {cls.name} family {has}; asked for {kind!r}")
        # Schedulers keep CPU tensors: build them on the CPU even under a meta/cuda device context.
        with torch.device("cpu"):
            return cls._make_tiny_scheduler(kind)

    @classmethod
    def _make_tiny_scheduler(cls, kind: str):
        """The hook behind :meth:`tiny_scheduler`: ``kind`` is one of :attr:`tiny_kinds`."""
        raise NotImplementedError

    @classmethod
    def tiny_components(cls, kind: str, seed: int = 0, with_t5: bool = True) -> dict:
        """The components of the tiny pipeline ``kind`` (one of :attr:`tiny_kinds`), for
        ``getattr(diffusers, cls.pipeline_class)(**components)``.

        Args:
            seed: every module is initialised from ``seed`` (each module re-seeds, so adding one
                component does not change the others).
            with_t5: families with an optional T5 encoder (SD3): ``False`` leaves it out.
        """
        raise FamilyError(f"the {cls.name} family has no tiny pipelines")

    @classmethod
    def real_size_denoiser(cls) -> torch.nn.Module:
        """The released denoiser's architecture with random weights, on the current default device
        (``torch.device("meta")`` only counts parameters)."""
        raise FamilyError(f"the {cls.name} family has no real-size configuration")

    @classmethod
    def real_size_components(cls, use_t5: bool = False, size: str = "real") -> dict:
        """The components of the released pipeline's architecture with random weights.

        Args:
            use_t5: families with an optional T5 encoder (SD3): add it.
            size: one of :attr:`real_sizes`.
        """
        raise FamilyError(f"the {cls.name} family has no real-size configuration")
