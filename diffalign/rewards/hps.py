"""HPSv2 and HPSv2.1: Wu et al., 2023, "Human Preference Score v2: A Solid Benchmark for Evaluating
Human Preferences of Text-to-Image Synthesis" (https://arxiv.org/abs/2306.09341; code tgxs002/HPSv2).

An OpenCLIP ViT-H-14 (laion2B-s32B-b79K) fully fine-tuned on HPD v2. Checkpoints in hub repo
``xswu/HPSv2``: ``HPS_v2_compressed.pt`` (v2.0) and ``HPS_v2.1_compressed.pt`` (v2.1), each a dict
whose ``state_dict`` is the OpenCLIP model's. The two versions' scores are not comparable, so the
version is part of every label (``hpsv2.0``, ``hpsv2.1``).

    score = 100 · cos(text, image)        (the official benchmark's ``image_features @ text_features.T * 100``)
    group_probs = softmax over a prompt's images of exp(logit_scale) · cos   (HPSv2's training loss)

Preprocessing (``light_augmentation`` validation transform): to tensor, longest side → 224
(bicubic), black padding to a centred 224 square, OpenAI CLIP mean/std. Tokenizer: OpenCLIP's
``SimpleTokenizer`` (its bundled BPE vocabulary), 77 tokens.

The weights run on a transformers ``CLIPModel``: :func:`open_clip_to_transformers` maps the
OpenCLIP layout (fused ``in_proj`` attention, ``proj`` matrices used as ``x @ proj``) to
transformers' (separate q/k/v, ``Linear`` projections), so scoring needs neither the ``hpsv2``
package nor OpenCLIP's model code. ``tests/rewards`` checks it against OpenCLIP to 1e-5.
"""

from __future__ import annotations

import os
import re
from typing import ClassVar

import torch
from torch import Tensor

from diffalign.rewards.base import RewardLoadError, finish
from diffalign.rewards.clip import CONTEXT_LENGTH, CLIPReward
from diffalign.rewards.loading import assign_state, find_file, load_checkpoint
from diffalign.rewards.preprocess import ImageTransform

VIT_H_14 = {
    "embed_dim": 1024,
    "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24},
}
"""OpenCLIP's ViT-H-14 model config (as in HPSv2's vendored ``model_configs/ViT-H-14.json``)."""

# OpenCLIP config keys we translate; any other key (layer scale, attention pooling, ...) changes
# the architecture in ways the mapping does not cover, so it is refused.
_VISION_KEYS = {"image_size", "layers", "width", "head_width", "patch_size", "mlp_ratio"}
_TEXT_KEYS = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}
_TOP_KEYS = {"embed_dim", "vision_cfg", "text_cfg"}


def clip_config_from_open_clip(architecture: dict):
    """The transformers ``CLIPConfig`` of an OpenCLIP model config (plain ViT + text transformer,
    GELU, LayerNorm eps 1e-5, OpenCLIP's defaults for keys left out)."""
    from transformers import CLIPConfig

    vision, text = architecture["vision_cfg"], architecture["text_cfg"]
    unsupported = set(vision) - _VISION_KEYS | set(text) - _TEXT_KEYS | set(architecture) - _TOP_KEYS
    if unsupported:
        raise ValueError(f"OpenCLIP config keys {sorted(unsupported)} are not supported by the HPS mapping")
    vision_width, text_width = vision["width"], text["width"]
    vocab = text.get("vocab_size", 49408)
    return CLIPConfig(
        projection_dim=architecture["embed_dim"],
        vision_config=dict(
            hidden_size=vision_width, intermediate_size=int(vision_width * vision.get("mlp_ratio", 4.0)),
            num_hidden_layers=vision["layers"], num_attention_heads=vision_width // vision.get("head_width", 64),
            image_size=vision["image_size"], patch_size=vision["patch_size"], hidden_act="gelu", layer_norm_eps=1e-5,
        ),
        text_config=dict(
            vocab_size=vocab, hidden_size=text_width, intermediate_size=int(text_width * text.get("mlp_ratio", 4.0)),
            num_hidden_layers=text["layers"], num_attention_heads=text.get("heads", 8),
            max_position_embeddings=text.get("context_length", 77), hidden_act="gelu", layer_norm_eps=1e-5,
            # OpenCLIP pools at the end-of-text token, the vocabulary's last id; padding is 0.
            bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=0,
        ),
    )


# OpenCLIP name → transformers name, applied in order to the start of each key.
_PREFIXES = (
    ("visual.transformer.resblocks.", "vision_model.encoder.layers."),
    ("transformer.resblocks.", "text_model.encoder.layers."),
    ("visual.conv1.", "vision_model.embeddings.patch_embedding."),
    ("visual.class_embedding", "vision_model.embeddings.class_embedding"),
    ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
    ("visual.ln_pre.", "vision_model.pre_layrnorm."),
    ("visual.ln_post.", "vision_model.post_layernorm."),
    ("visual.proj", "visual_projection.weight"),
    ("token_embedding.", "text_model.embeddings.token_embedding."),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    ("ln_final.", "text_model.final_layer_norm."),
    ("text_projection", "text_projection.weight"),
    ("logit_scale", "logit_scale"),
)
_BLOCK = {"ln_1.": "layer_norm1.", "ln_2.": "layer_norm2.", "attn.out_proj.": "self_attn.out_proj.",
          "mlp.c_fc.": "mlp.fc1.", "mlp.c_proj.": "mlp.fc2."}
_TRANSPOSED = {"visual_projection.weight", "text_projection.weight"}  # OpenCLIP computes x @ proj
_IGNORED = {"attn_mask", "visual.attn_mask"}  # the causal mask buffer some OpenCLIP versions save


def open_clip_to_transformers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map an OpenCLIP ``CLIP`` state dict to a transformers ``CLIPModel`` one.

    Raises:
        RewardLoadError: a key the mapping does not know (an architecture it does not cover).
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key in _IGNORED:
            continue
        new = _rename(key)
        if new is None:
            raise RewardLoadError(f"OpenCLIP key {key!r} has no transformers counterpart (unsupported architecture)")
        if new.endswith("self_attn.in_proj_weight") or new.endswith("self_attn.in_proj_bias"):
            kind = new.rsplit("_", 1)[-1]  # weight | bias
            stem = new[: -len(f"in_proj_{kind}")]
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{stem}{name}.{kind}"] = part
        else:
            out[new] = value.t() if new in _TRANSPOSED else value
    return out


def _rename(key: str) -> str | None:
    for old, new in _PREFIXES:
        if key.startswith(old):
            rest = key[len(old):]
            if new.endswith("layers."):
                match = re.match(r"(\d+)\.(.*)", rest)
                if not match:
                    return None
                inner = _block_key(match.group(2))
                return None if inner is None else f"{new}{match.group(1)}.{inner}"
            return new + rest if new.endswith(".") else (new if not rest else None)
    return None


def _block_key(rest: str) -> str | None:
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        return "self_attn." + rest.split(".")[1]
    for old, new in _BLOCK.items():
        if rest.startswith(old):
            return new + rest[len(old):]
    return None


class OpenCLIPTokenize:
    """OpenCLIP's ``SimpleTokenizer`` (bundled BPE vocabulary, lower-cased, 77 tokens, 0-padded)."""

    def __init__(self, context_length: int = CONTEXT_LENGTH):
        from open_clip.tokenizer import SimpleTokenizer

        self.tokenizer = SimpleTokenizer(context_length=context_length)

    def __call__(self, prompts: list[str]) -> dict:
        return {"input_ids": self.tokenizer(prompts)}


class HPSv2(CLIPReward):
    """HPS v2.0 × 100 (see the module docstring); :class:`HPSv21` is v2.1."""

    name = "hpsv2"
    version: ClassVar[str] = "v2.0"
    default_id = "xswu/HPSv2"
    checkpoint: ClassVar[str] = "HPS_v2_compressed.pt"

    @property
    def label(self) -> str:
        return f"hps{self.version}"

    def score_pixels(self, pixels: Tensor, prompts: list[str]) -> Tensor:
        return 100.0 * self.cosine(pixels, prompts)

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor], architecture: dict = VIT_H_14, dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None, source: str = "state dict") -> HPSv2:
        """Build from an OpenCLIP-layout state dict (``architecture``: its OpenCLIP model config)."""
        from accelerate import init_empty_weights
        from transformers import CLIPModel

        with init_empty_weights(include_buffers=False):
            clip = CLIPModel(clip_config_from_open_clip(architecture))
        assign_state(clip, open_clip_to_transformers(state), f"HPS{cls.version}", source, dtype)
        context = architecture["text_cfg"].get("context_length", CONTEXT_LENGTH)
        transform = ImageTransform(size=architecture["vision_cfg"]["image_size"], fit="pad")
        model = cls(clip, transform, OpenCLIPTokenize(context))
        return finish(model, dtype, device)

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike | None = None, dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None, architecture: dict = VIT_H_14) -> HPSv2:
        """Load an HPS checkpoint: a ``.pt`` file, a folder holding it, or a hub repo (``xswu/HPSv2``)."""
        path = find_file(path_or_id or cls.default_id, [cls.checkpoint], f"HPS{cls.version}")
        return cls.from_state_dict(load_checkpoint(path), architecture, dtype, device, source=str(path))


class HPSv21(HPSv2):
    """HPS v2.1 × 100 (same architecture, retrained; scores not comparable with v2.0)."""

    name = "hpsv2.1"
    version = "v2.1"
    checkpoint = "HPS_v2.1_compressed.pt"
