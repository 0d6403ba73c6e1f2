"""The tiny text encoders, tokenizers and VAE that every family's tiny pipeline is made of
(:meth:`~diffalign.families.builds.Builds.tiny_components`): built from configs with fixed seeds,
the tokenizers from a small vocabulary written here, so nothing touches a model hub.
:mod:`diffalign.testing` saves the pipelines the families build from them.
"""

from __future__ import annotations

import string

import torch

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


def tiny_umt5_encoder(d_model: int = 32, seed: int = 0):
    """A 1-layer UMT5 encoder (Wan's text encoder class) over the tiny T5 vocabulary."""
    return tiny_t5_encoder(d_model, seed, umt5=True)


QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def tiny_qwen2_tokenizer():
    """A byte-level ``Qwen2Tokenizer``: the 256 byte symbols, no merges, and the chat template's
    special tokens (Qwen-Image wraps each prompt in ``<|im_start|>…<|im_end|>``)."""
    from transformers import Qwen2Tokenizer

    vocab = {tok: i for i, tok in enumerate([*_bytes_to_unicode().values(), *QWEN_SPECIALS])}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token="<|endoftext|>", eos_token="<|im_end|>",
                               pad_token="<|endoftext|>", model_max_length=2048)
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIALS[1:])})
    # The chat layout Qwen's templates produce, for pipelines that apply it (FLUX.2 [klein]).
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                               "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return tokenizer


def tiny_qwen3(hidden: int = 16, layers: int = 2, seed: int = 0):
    """A ``Qwen3ForCausalLM`` of ``layers`` layers of width ``hidden`` over :func:`tiny_qwen2_tokenizer`'s ids
    (FLUX.2 [klein] reads its layers 9, 18 and 27: 28 of them)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(hidden_size=hidden, intermediate_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                         num_key_value_heads=2, head_dim=8, vocab_size=256 + len(QWEN_SPECIALS), max_position_embeddings=1024,
                         bos_token_id=None, eos_token_id=258, pad_token_id=256)
    _seeded(seed)
    return Qwen3ForCausalLM(config).eval()


def tiny_qwen25_vl(hidden: int = 16, seed: int = 0):
    """A 2-layer ``Qwen2_5_VLForConditionalGeneration`` (a 1-block vision tower it never uses for
    text) over :func:`tiny_qwen2_tokenizer`'s ids; its hidden width is the tiny Qwen-Image
    transformer's ``joint_attention_dim``."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    vocab = 256 + len(QWEN_SPECIALS) + 5  # room for the vision tokens' ids, which text never uses
    text = dict(hidden_size=hidden, intermediate_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2, vocab_size=vocab, rope_theta=1e6, bos_token_id=None, eos_token_id=258,
                pad_token_id=256, rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"})
    config = Qwen2_5_VLConfig(text_config=text, vision_config=dict(depth=1, hidden_size=hidden, intermediate_size=hidden,
                                                                   num_heads=2, out_hidden_size=hidden),
                              vocab_size=vocab, bos_token_id=None, eos_token_id=258, pad_token_id=256,
                              image_token_id=vocab - 5, video_token_id=vocab - 4, vision_start_token_id=vocab - 3,
                              vision_end_token_id=vocab - 2, vision_token_id=vocab - 1)
    _seeded(seed)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


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
