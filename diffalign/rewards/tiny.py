"""Tiny, offline, seeded reward models for tests and demos (no hub access, random weights).

Each registered reward can be built from a tiny config with :func:`tiny_reward`; the CLIP ones
can also be saved as a folder that their ``from_pretrained`` reads (:func:`save_tiny_clip`), and
HPS as an OpenCLIP-layout checkpoint (:func:`save_tiny_hps`), so loading is tested for real.
Scores of random models mean nothing; shapes, scales, gradients and key mappings do.

Example:
    >>> import torch
    >>> from diffalign.rewards.tiny import tiny_reward
    >>> reward = tiny_reward("pickscore")
    >>> reward.score(torch.rand(2, 3, 48, 40), ["a red circle", "a cat"]).shape
    torch.Size([2])
"""

from __future__ import annotations

import json
import math
import os
import string
from pathlib import Path

import torch

from diffalign.testing import MAX_TOKENS, clip_vocab_and_merges, tiny_clip_tokenizer

IMAGE_SIZE = 32  # every tiny model sees 32 × 32 images (patches of 8)

TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 2, "width": 32, "head_width": 8, "patch_size": 8},
    # OpenCLIP's bundled tokenizer has 49408 tokens, so the tiny model keeps that vocabulary.
    "text_cfg": {"context_length": MAX_TOKENS, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}
"""An OpenCLIP model config with HPS's structure at toy size."""

# BLIP's default init (std 0.02) leaves a toy model's score nearly constant in the image; std 0.2
# makes it respond, so tests can tell images apart.
TINY_BLIP_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        image_size=IMAGE_SIZE, patch_size=8, layer_norm_eps=1e-6, hidden_act="gelu", initializer_range=0.2)
"""A ``BlipVisionConfig`` with BLIP ViT-L/16's structure at toy size."""

_BERT_WORDS = "a the of photo painting cat dog red blue green circle square".split()


def tiny_bert_vocab() -> list[str]:
    """BERT word pieces: specials, a few words, characters and their ``##`` continuations."""
    chars = list(string.ascii_lowercase + string.digits + ".,!?-'")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + _BERT_WORDS + chars + ["##" + c for c in chars]
    return list(dict.fromkeys(tokens))  # "a" is both a word and a character


def tiny_bert_tokenizer():
    """A ``BertTokenizer`` over :func:`tiny_bert_vocab` (lower-cases, never out of vocabulary)."""
    from transformers import BertTokenizer

    return BertTokenizer(vocab={token: i for i, token in enumerate(tiny_bert_vocab())})


def tiny_med_config() -> dict:
    """A BLIP ``med_config.json`` (BERT config) at toy size; dropouts on, so ``eval()`` matters."""
    return {
        "vocab_size": len(tiny_bert_vocab()) + 2,  # + [DEC] and [ENC], as BLIP adds them
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "max_position_embeddings": 40, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "pad_token_id": 0,
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "add_cross_attention": True,
        "initializer_range": 0.2,
    }


def tiny_clip(seed: int = 0, logit_scale: float = 20.0):
    """A 2-layer transformers ``CLIPModel`` (32 px, projection 16) over the tiny CLIP vocabulary,
    with exp(logit_scale) = ``logit_scale``."""
    from transformers import CLIPConfig, CLIPModel

    vocab, _ = clip_vocab_and_merges()
    config = CLIPConfig(
        projection_dim=16, logit_scale_init_value=math.log(logit_scale),
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=MAX_TOKENS, hidden_act="gelu",
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                         pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=IMAGE_SIZE, patch_size=8, hidden_act="gelu"),
    )
    torch.manual_seed(seed)
    return CLIPModel(config).eval()


def tiny_open_clip(seed: int = 0, logit_scale: float = 30.0):
    """The :data:`TINY_OPEN_CLIP` model built by OpenCLIP itself (the original HPS layout)."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_OPEN_CLIP).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(logit_scale))
    return model


def tiny_reward(name: str, seed: int = 0):
    """The reward model ``name`` of :data:`diffalign.rewards.REWARDS` at toy size, eval mode, frozen."""
    from diffalign.rewards import reward_class
    from diffalign.rewards.base import finish
    from diffalign.rewards.clip import HFTokenize
    from diffalign.rewards.preprocess import ImageTransform

    cls = reward_class(name)
    if name == "pickscore":
        model = cls(tiny_clip(seed), ImageTransform(IMAGE_SIZE), HFTokenize(tiny_clip_tokenizer()))
    elif name == "clip_score":
        model = cls(tiny_clip(seed), ImageTransform(IMAGE_SIZE), HFTokenize(tiny_clip_tokenizer()), backbone="tiny-clip")
    elif name in ("hpsv2", "hpsv2.1"):
        return cls.from_state_dict(tiny_open_clip(seed).state_dict(), TINY_OPEN_CLIP)
    elif name == "aesthetic":
        from diffalign.rewards.aesthetic import LinearMLPHead

        clip = tiny_clip(seed)
        torch.manual_seed(seed + 1)
        model = cls(clip, ImageTransform(IMAGE_SIZE, crop_offset="round"), LinearMLPHead(16))
    elif name == "image_reward":
        model = _tiny_image_reward(seed)
    else:
        raise ValueError(f"no tiny build for {name!r}")
    return finish(model)


def _tiny_image_reward(seed: int):
    from transformers import BlipTextModel, BlipVisionConfig, BlipVisionModel

    from diffalign.rewards.aesthetic import LinearMLPHead
    from diffalign.rewards.image_reward import ImageReward, blip_tokenizer, text_config_from_med
    from diffalign.rewards.preprocess import ImageTransform

    torch.manual_seed(seed)
    vision = BlipVisionModel(BlipVisionConfig(**TINY_BLIP_VISION))
    text = BlipTextModel(text_config_from_med(tiny_med_config(), TINY_BLIP_VISION["hidden_size"]), add_pooling_layer=False)
    return ImageReward(vision, text, LinearMLPHead(32), blip_tokenizer(tiny_bert_tokenizer()),
                       ImageTransform(IMAGE_SIZE, crop_offset="round"))


def save_tiny_clip(path: str | os.PathLike, seed: int = 0, logit_scale: float = 20.0) -> Path:
    """Write a tiny ``CLIPModel`` folder with its tokenizer and ``preprocessor_config.json``: what
    ``PickScore``/``CLIPScore``/``Aesthetic`` (as backbone) ``from_pretrained`` read."""
    from diffalign.rewards.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    path = Path(path)
    tiny_clip(seed, logit_scale).save_pretrained(path, safe_serialization=True)
    tiny_clip_tokenizer().save_pretrained(path)
    processor = {"crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}, "size": {"shortest_edge": IMAGE_SIZE},
                 "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD), "resample": 3}
    (path / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return path


def save_tiny_hps(path: str | os.PathLike, version: str = "v2.1", seed: int = 0) -> Path:
    """Write :func:`tiny_open_clip` as an HPS checkpoint (``{"state_dict": ...}``, OpenCLIP layout)
    named as the release names it, in the folder ``path``; returns the file."""
    from diffalign.rewards.hps import HPSv2, HPSv21

    cls = HPSv21 if version == "v2.1" else HPSv2
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": tiny_open_clip(seed).state_dict()}, path / cls.checkpoint)
    return path / cls.checkpoint


TINY_REWARDS = ("pickscore", "hpsv2", "hpsv2.1", "image_reward", "clip_score", "aesthetic")
"""The rewards :func:`save_tiny_reward` can build offline (today: every registered one)."""


def save_tiny_reward(name: str, folder: str | os.PathLike) -> tuple[Path, dict]:
    """Write the tiny random model of reward ``name`` as its release lays it out, under ``folder``.

    Returns:
        ``(path, kwargs)`` such that ``load_reward(name, path, **kwargs)`` loads it (the kwargs
        give the toy architecture where the loader would otherwise assume the full-size one).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if name in ("pickscore", "clip_score"):
        return save_tiny_clip(folder), {}
    if name in ("hpsv2", "hpsv2.1"):
        checkpoint = save_tiny_hps(folder, version="v2.1" if name == "hpsv2.1" else "v2.0")
        return checkpoint, {"architecture": TINY_OPEN_CLIP}
    if name == "aesthetic":
        # The MLP head and its CLIP backbone are separate downloads in the release, so two folders.
        backbone = save_tiny_clip(folder / "backbone")
        torch.save(tiny_reward("aesthetic").head.state_dict(), folder / "aesthetic-model.pth")
        return folder, {"backbone": backbone}
    if name == "image_reward":
        from diffalign.rewards.image_reward import image_reward_to_ours, ours_to_image_reward

        state = tiny_reward("image_reward").state_dict()
        original = ours_to_image_reward(state)
        if set(image_reward_to_ours(original)) != set(state):  # the loader must read back exactly these keys
            raise RuntimeError("the tiny ImageReward checkpoint does not map back onto the model")
        torch.save(original, folder / "ImageReward.pt")
        (folder / "med_config.json").write_text(json.dumps(tiny_med_config()))
        tiny_bert_tokenizer().save_pretrained(folder)
        return folder, {"vision_config": TINY_BLIP_VISION}
    raise ValueError(f"no tiny build for reward {name!r}")


def tiny_step_aware(seed: int = 0, time_std: float = 0.0):
    """A step-aware preference model on :func:`tiny_clip` (eval mode, frozen).

    Args:
        time_std: ``0`` keeps the identity initialisation (scores equal the CLIP backbone's);
            otherwise N(0, time_std²) noise is added to every time-conditioning weight, so the
            score depends on ``t``.
    """
    from diffalign.rewards.base import finish
    from diffalign.rewards.clip import HFTokenize
    from diffalign.rewards.step_aware import SPMTransform, StepAwarePreferenceModel

    model = StepAwarePreferenceModel(tiny_clip(seed), SPMTransform(IMAGE_SIZE), HFTokenize(tiny_clip_tokenizer()))
    if time_std:
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for param in model.time.parameters():
                param.add_(torch.randn(param.shape, generator=generator) * time_std)
    return finish(model)


def save_tiny_step_aware_authors_layout(folder: str | os.PathLike, seed: int = 0, time_std: float = 0.5) -> tuple[Path, Path]:
    """Write :func:`tiny_step_aware` ``(seed, time_std)`` as the authors' released ``.bin``.

    The key names are spelt out here from the authors' module tree (``StepAwarePreferenceModel.model``
    = ``HFTimeConditionedCLIPModel``: ``t_embedder.mlp`` = Linear, SiLU, Linear; a SiLU, Linear
    ``adaLN_modulation`` per vision layer and on the pooled output), not produced by the key map
    under test; the ``position_ids`` buffers that transformers 4.27 saved are included.

    Returns:
        ``(checkpoint, clip_source)``: the ``.bin`` and a tiny CLIP folder (config, tokenizer,
        preprocessor) of another seed, so every weight that loads must come from the ``.bin``.
    """
    from diffalign.rewards.step_aware_authors import AUTHORS_FILES

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_step_aware(seed, time_std)
    state = {f"model.{key}": value for key, value in model.clip.state_dict().items()}
    vision = model.clip.config.vision_config
    state["model.text_model.embeddings.position_ids"] = torch.arange(MAX_TOKENS)[None]
    state["model.vision_model.embeddings.position_ids"] = torch.arange((vision.image_size // vision.patch_size) ** 2 + 1)[None]
    time = model.time
    for index, linear in ((0, time.embedder.linear_1), (2, time.embedder.linear_2)):
        state[f"model.t_embedder.mlp.{index}.weight"] = linear.weight
        state[f"model.t_embedder.mlp.{index}.bias"] = linear.bias
    for layer, linear in enumerate(time.layers):
        state[f"model.vision_model.encoder.layers.{layer}.adaLN_modulation.1.weight"] = linear.weight
        state[f"model.vision_model.encoder.layers.{layer}.adaLN_modulation.1.bias"] = linear.bias
    state["model.vision_model.adaLN_modulation.1.weight"] = time.pooled.weight
    state["model.vision_model.adaLN_modulation.1.bias"] = time.pooled.bias
    checkpoint = folder / AUTHORS_FILES["v1-5"]
    torch.save({key: value.detach().clone() for key, value in state.items()}, checkpoint)
    return checkpoint, save_tiny_clip(folder / "clip-config", seed=seed + 7)
