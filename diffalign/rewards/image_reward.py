"""ImageReward: Xu et al., NeurIPS 2023, "ImageReward: Learning and Evaluating Human Preferences for
Text-to-Image Generation" (https://arxiv.org/abs/2304.05977; code THUDM/ImageReward).

BLIP: a ViT-L/16 image encoder (224 px, LayerNorm eps 1e-6) and a BERT-base text encoder whose
every layer cross-attends to the image tokens; the text's [CLS] state goes through the
aesthetic-predictor MLP (768 → … → 1, no activations), then the official standardisation:

    score = (MLP(h_CLS) − 0.16717362830052426) / 1.0333394966054072     (≈ N(0, 1) over its data)

Prompt: BERT ``bert-base-uncased`` tokenizer (+ ``[DEC]`` and ``[ENC]`` specials, vocab 30524),
padded and truncated to 35 tokens; the image tokens are all attended. Preprocessing: shortest
side → 224 (bicubic), centre crop (torchvision rounding), OpenAI CLIP mean/std.

Re-implemented on transformers' ``BlipVisionModel`` and ``BlipTextModel`` (no ``image-reward``,
timm or fairscale): :func:`image_reward_to_ours` maps the checkpoint ``ImageReward.pt`` (hub
``THUDM/ImageReward``, with ``med_config.json``) to this layout; ``tests/rewards`` checks it
against a model in the original layout to 1e-5.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import Tensor

from diffalign.rewards.aesthetic import LinearMLPHead
from diffalign.rewards.base import RewardLoadError, RewardModel, finish
from diffalign.rewards.loading import assign_state, find_file, has_tokenizer, load_checkpoint, load_tokenizer, read_json
from diffalign.rewards.preprocess import ImageTransform

MEAN, STD = 0.16717362830052426, 1.0333394966054072  # ImageReward.py: the reward's mean and std on its data
MAX_TOKENS = 35  # ImageReward.py tokenizes prompts to this length

VIT_LARGE_16 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    image_size=224, patch_size=16, layer_norm_eps=1e-6, hidden_act="gelu")
"""BLIP's ``create_vit("large", 224)``, as a transformers ``BlipVisionConfig``."""

# Original (BLIP/timm) → ours, per key prefix; the text encoder's names already agree.
_VISION = (
    ("blip.visual_encoder.cls_token", "vision.embeddings.class_embedding"),
    ("blip.visual_encoder.pos_embed", "vision.embeddings.position_embedding"),
    ("blip.visual_encoder.patch_embed.proj.", "vision.embeddings.patch_embedding."),
    ("blip.visual_encoder.norm.", "vision.post_layernorm."),
)
_BLOCK = {"norm1.": "layer_norm1.", "norm2.": "layer_norm2.", "attn.qkv.": "self_attn.qkv.",
          "attn.proj.": "self_attn.projection.", "mlp.fc1.": "mlp.fc1.", "mlp.fc2.": "mlp.fc2."}
# Trained for BLIP's contrastive heads or buffers, unused by the reward.
_UNUSED = re.compile(r"^blip\.(vision_proj|text_proj)\.|position_ids$")


def image_reward_to_ours(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map an ``ImageReward.pt`` state dict (``blip.visual_encoder.*`` timm-style ViT,
    ``blip.text_encoder.*`` BLIP BERT, ``mlp.layers.*``) to :class:`ImageReward`'s.

    Raises:
        RewardLoadError: a key the mapping does not know.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if _UNUSED.search(key):
            continue
        new = _rename(key)
        if new is None:
            raise RewardLoadError(f"ImageReward key {key!r} has no counterpart in the re-implementation")
        out[new] = value
    return out


def ours_to_image_reward(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of :func:`image_reward_to_ours`: our model's state dict renamed to the released
    ``ImageReward.pt`` layout (used to write tiny checkpoints that load like the real one).

    Raises:
        KeyError: a key with no ``ImageReward.pt`` name.
    """

    def original(key: str) -> str:
        if key.startswith("text."):
            return "blip.text_encoder." + key[len("text."):]
        if key.startswith("head."):
            return "mlp." + key[len("head."):]
        for old, new in _VISION:
            if key == new or (new.endswith(".") and key.startswith(new)):
                return old + key[len(new):]
        prefix = "vision.encoder.layers."
        if key.startswith(prefix):
            layer, _, rest = key[len(prefix):].partition(".")
            for old, new in _BLOCK.items():
                if rest.startswith(new):
                    return f"blip.visual_encoder.blocks.{layer}.{old}{rest[len(new):]}"
        raise KeyError(f"no ImageReward.pt name for {key!r}")

    return {original(k): v for k, v in state.items()}


def _rename(key: str) -> str | None:
    if key.startswith("blip.text_encoder."):
        return "text." + key[len("blip.text_encoder."):]
    if key.startswith("mlp.layers."):
        return "head." + key[len("mlp."):]
    for old, new in _VISION:
        if key.startswith(old):
            rest = key[len(old):]
            return new + rest if old.endswith(".") else (new if not rest else None)
    match = re.match(r"blip\.visual_encoder\.blocks\.(\d+)\.(.*)", key)
    if match:
        for old, new in _BLOCK.items():
            if match.group(2).startswith(old):
                return f"vision.encoder.layers.{match.group(1)}.{new}{match.group(2)[len(old):]}"
    return None


def text_config_from_med(med: dict, vision_width: int):
    """A ``BlipTextConfig`` from BLIP's ``med_config.json`` (a BERT config), cross-attending to
    ``vision_width``-wide image tokens (BLIP sets ``encoder_width`` to the ViT's width)."""
    from transformers import BlipTextConfig

    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "max_position_embeddings", "hidden_act", "layer_norm_eps", "pad_token_id", "initializer_range")
    return BlipTextConfig(**{k: med[k] for k in keys if k in med}, encoder_hidden_size=vision_width,
                          hidden_dropout_prob=med.get("hidden_dropout_prob", 0.0),
                          attention_probs_dropout_prob=med.get("attention_probs_dropout_prob", 0.0),
                          bos_token_id=None, sep_token_id=None,  # generation ids: unused when scoring
                          is_decoder=True)  # builds the cross-attention layers; scoring runs bidirectionally


def blip_tokenizer(tokenizer):
    """BLIP's tokenizer: BERT's plus ``[DEC]`` (bos) and ``[ENC]`` (blip.py ``init_tokenizer``)."""
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


class ImageReward(RewardModel):
    """ImageReward on BLIP parts of transformers (see the module docstring).

    Args:
        vision: ``BlipVisionModel``; text: ``BlipTextModel`` (cross-attention, no pooler);
        head: the MLP; tokenizer: a BLIP/BERT tokenizer; transform: preprocessing.
    """

    name = "image_reward"
    default_id = "THUDM/ImageReward"
    default_tokenizer = "bert-base-uncased"

    def __init__(self, vision, text, head: LinearMLPHead, tokenizer, transform: ImageTransform):
        super().__init__()
        self.vision, self.text, self.head = vision, text, head
        self.tokenizer = tokenizer
        self.transform = transform

    def score_pixels(self, pixels: Tensor, prompts: list[str]) -> Tensor:
        image_tokens = self.vision(pixel_values=pixels).last_hidden_state  # [B, 1 + N, Dv]
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        image_mask = torch.ones(image_tokens.shape[:2], dtype=torch.long, device=self.device)
        hidden = self.text(
            input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device),
            encoder_hidden_states=image_tokens, encoder_attention_mask=image_mask,
        ).last_hidden_state  # [B, L, Dt]
        return (self.head(hidden[:, 0]) - MEAN) / STD

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor], med_config: dict, tokenizer, vision_config: dict = VIT_LARGE_16,
                        dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                        source: str = "state dict") -> ImageReward:
        """Build from an ``ImageReward.pt``-layout state dict and BLIP's ``med_config.json``."""
        from accelerate import init_empty_weights
        from transformers import BlipTextModel, BlipVisionConfig, BlipVisionModel

        vision_config = BlipVisionConfig(**vision_config)
        with init_empty_weights(include_buffers=False):
            model = cls(
                BlipVisionModel(vision_config),
                BlipTextModel(text_config_from_med(med_config, vision_config.hidden_size), add_pooling_layer=False),
                LinearMLPHead(med_config["hidden_size"]), tokenizer,
                ImageTransform(size=vision_config.image_size, crop_offset="round"),
            )
        assign_state(model, image_reward_to_ours(state), "ImageReward", source, dtype)
        return finish(model, dtype, device)

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike | None = None, tokenizer: str | os.PathLike | None = None,
                        dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                        vision_config: dict = VIT_LARGE_16) -> ImageReward:
        """Load ``ImageReward.pt`` + ``med_config.json`` (a folder or hub repo ``THUDM/ImageReward``).

        Args:
            tokenizer: BERT tokenizer source; default: the folder when it holds one, else
                ``bert-base-uncased``.
        """
        source = path_or_id or cls.default_id
        checkpoint = find_file(source, ["ImageReward.pt"], "ImageReward")
        folder = checkpoint.parent if Path(source).expanduser().is_file() else source
        med = read_json(folder, "med_config.json", "ImageReward")
        tokenizer = tokenizer or (folder if has_tokenizer(folder) else cls.default_tokenizer)
        return cls.from_state_dict(load_checkpoint(checkpoint), med, blip_tokenizer(load_tokenizer(tokenizer, "ImageReward")),
                                   vision_config, dtype, device, source=str(checkpoint))
