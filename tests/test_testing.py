"""The tiny offline components: tokenizers from a written vocabulary, deterministic weights."""

import torch

from diffalign.testing import (
    MAX_TOKENS, clip_vocab_and_merges, tiny_clip_tokenizer, tiny_components, tiny_t5_tokenizer,
)


def test_clip_tokenizer_merges_known_words():
    tok = tiny_clip_tokenizer()
    vocab, _ = clip_vocab_and_merges()
    ids = tok("a red cat").input_ids
    assert ids == [vocab["<|startoftext|>"], vocab["a</w>"], vocab["red</w>"], vocab["cat</w>"], vocab["<|endoftext|>"]]
    assert tok.decode(ids, skip_special_tokens=True).strip() == "a red cat"


def test_clip_tokenizer_handles_any_text_and_truncates():
    tok = tiny_clip_tokenizer()
    ids = tok("Zebra ünïcode ☃ " * 40, truncation=True, padding="max_length", max_length=MAX_TOKENS).input_ids
    assert len(ids) == MAX_TOKENS
    # CLIP's unknown token is its end token, so "nothing unknown" means no end token before the last.
    assert tok.eos_token_id not in ids[1:-1]


def test_t5_tokenizer_prefers_whole_words():
    tok = tiny_t5_tokenizer()
    pieces = tok.convert_ids_to_tokens(tok("a red cat").input_ids)
    assert pieces == ["▁a", "▁red", "▁cat", "</s>"]


def test_components_are_deterministic_per_seed():
    _, first = tiny_components("sdxl", seed=3)
    _, again = tiny_components("sdxl", seed=3)
    _, other = tiny_components("sdxl", seed=4)
    for a, b, c in zip(first["unet"].parameters(), again["unet"].parameters(), other["unet"].parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, c) for a, c in zip(first["unet"].parameters(), other["unet"].parameters()))
