"""ImageReward in its original parameter layout, for the key-mapping test.

Written for this test from the structure of THUDM/ImageReward (``ImageReward.py``: ``blip`` +
``mlp``; ``models/BLIP/blip_pretrain.py``: ``visual_encoder``, ``text_encoder``, ``vision_proj``,
``text_proj``; ``models/BLIP/med.py``: a post-LayerNorm BERT whose layers hold ``attention``,
``crossattention``, ``intermediate``, ``output``). The vision tower is timm's
``VisionTransformer``, from which BLIP's ViT was adapted (same parameter names); the text tower is
written out below, independently of transformers' BLIP port that the code under test uses.
"""

import math
from functools import partial

import torch
from torch import nn

MEAN, STD = 0.16717362830052426, 1.0333394966054072  # ImageReward.py


class _Node(nn.Module):
    """An empty module to hang named children on (to reproduce the original key paths)."""


class _Attention(nn.Module):
    """med.py's BertAttention: ``self.{query,key,value}`` and ``output.{dense,LayerNorm}``."""

    def __init__(self, width: int, context_width: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.self = _Node()
        self.self.query = nn.Linear(width, width)
        self.self.key = nn.Linear(context_width, width)
        self.self.value = nn.Linear(context_width, width)
        self.output = _Node()
        self.output.dense = nn.Linear(width, width)
        self.output.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, x, context, additive_mask):
        batch, length, width = x.shape
        head = width // self.heads

        def split(t):
            return t.view(batch, -1, self.heads, head).transpose(1, 2)

        q, k, v = split(self.self.query(x)), split(self.self.key(context)), split(self.self.value(context))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head) + additive_mask, dim=-1)
        mixed = (weights @ v).transpose(1, 2).reshape(batch, length, width)
        return self.output.LayerNorm(self.output.dense(mixed) + x)


class _Layer(nn.Module):
    def __init__(self, config: dict, image_width: int):
        super().__init__()
        width, heads, eps = config["hidden_size"], config["num_attention_heads"], config["layer_norm_eps"]
        self.attention = _Attention(width, width, heads, eps)
        self.crossattention = _Attention(width, image_width, heads, eps)
        self.intermediate = _Node()
        self.intermediate.dense = nn.Linear(width, config["intermediate_size"])
        self.output = _Node()
        self.output.dense = nn.Linear(config["intermediate_size"], width)
        self.output.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, x, text_mask, image):
        x = self.attention(x, x, text_mask)
        x = self.crossattention(x, image, 0.0)  # every image token is attended (image_atts all ones)
        hidden = nn.functional.gelu(self.intermediate.dense(x))
        return self.output.LayerNorm(self.output.dense(hidden) + x)


class BlipTextEncoder(nn.Module):
    """med.py's BertModel without pooler, in "multimodal" mode (bidirectional, cross-attending)."""

    def __init__(self, config: dict, image_width: int):
        super().__init__()
        width = config["hidden_size"]
        self.embeddings = _Node()
        self.embeddings.word_embeddings = nn.Embedding(config["vocab_size"], width)
        self.embeddings.position_embeddings = nn.Embedding(config["max_position_embeddings"], width)
        self.embeddings.LayerNorm = nn.LayerNorm(width, eps=config["layer_norm_eps"])
        # med.py registers position_ids as a (persistent) buffer, so the checkpoint carries it.
        self.embeddings.register_buffer("position_ids", torch.arange(config["max_position_embeddings"])[None])
        self.encoder = _Node()
        self.encoder.layer = nn.ModuleList(_Layer(config, image_width) for _ in range(config["num_hidden_layers"]))

    def forward(self, input_ids, attention_mask, image):
        e = self.embeddings
        x = e.word_embeddings(input_ids) + e.position_embeddings(e.position_ids[:, : input_ids.shape[1]])
        x = e.LayerNorm(x)
        additive = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0  # med.py's extended mask
        for layer in self.encoder.layer:
            x = layer(x, additive, image)
        return x


class ImageRewardOriginal(nn.Module):
    """``blip.visual_encoder`` (timm ViT), ``blip.text_encoder``, ``blip.{vision,text}_proj``, ``mlp.layers``."""

    def __init__(self, med_config: dict, vision: dict):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.blip = _Node()
        self.blip.visual_encoder = VisionTransformer(
            img_size=vision["image_size"], patch_size=vision["patch_size"], embed_dim=vision["hidden_size"],
            depth=vision["num_hidden_layers"], num_heads=vision["num_attention_heads"],
            mlp_ratio=vision["intermediate_size"] / vision["hidden_size"], qkv_bias=True, num_classes=0,
            global_pool="", norm_layer=partial(nn.LayerNorm, eps=1e-6),
        )
        self.blip.text_encoder = BlipTextEncoder(med_config, vision["hidden_size"])
        self.blip.vision_proj = nn.Linear(vision["hidden_size"], 16)  # BLIP's contrastive heads: unused
        self.blip.text_proj = nn.Linear(med_config["hidden_size"], 16)
        self.mlp = _Node()
        self.mlp.layers = nn.Sequential(
            nn.Linear(med_config["hidden_size"], 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def randomise(self, seed: int = 0, std: float = 0.2) -> "ImageRewardOriginal":
        """Weights large enough that the score depends clearly on image and prompt."""
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                noise = torch.randn(p.shape, generator=generator, dtype=p.dtype) * std
                p.copy_(1.0 + noise if "norm" in name.lower() and name.endswith("weight") else noise)
        return self

    def score(self, normalised_pixels, input_ids, attention_mask):
        """``[B]`` standardised rewards, as ``ImageReward.score`` computes them."""
        image = self.blip.visual_encoder.forward_features(normalised_pixels)  # [B, 1 + N, D], after the final norm
        text = self.blip.text_encoder(input_ids, attention_mask, image)
        return ((self.mlp.layers(text[:, 0]) - MEAN) / STD).squeeze(-1)
