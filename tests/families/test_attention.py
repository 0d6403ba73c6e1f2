"""The attention backend switch."""

import importlib.util

import pytest
import torch

from diffalign.families import load
from diffalign.families.attention import AttentionBackendError, set_attention_backend


def test_sdpa_is_the_default(tiny_path):
    family = load(tiny_path("sd15"))
    names = {type(p).__name__ for p in family.denoiser.attn_processors.values()}
    assert names == {"AttnProcessor2_0"}


@pytest.mark.skipif(importlib.util.find_spec("xformers") is not None, reason="xformers is installed here")
def test_xformers_without_the_extra(tiny_path):
    with pytest.raises(AttentionBackendError, match=r"diffalign\[xformers\]"):
        load(tiny_path("sd15"), attention="xformers")


def test_xformers_without_a_gpu(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(AttentionBackendError, match="needs a CUDA GPU"):
        set_attention_backend(torch.nn.Linear(1, 1), "xformers")


def test_xformers_is_enabled_when_possible(monkeypatch):
    calls = []

    class Model(torch.nn.Module):
        def enable_xformers_memory_efficient_attention(self):
            calls.append("xformers")

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    set_attention_backend(Model(), "xformers")
    assert calls == ["xformers"]


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        set_attention_backend(torch.nn.Linear(1, 1), "flash")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_xformers_on_gpu(tiny_path):
    pytest.importorskip("xformers")
    family = load(tiny_path("sdxl"), attention="xformers", device="cuda")
    names = {type(p).__name__ for p in family.denoiser.attn_processors.values()}
    assert names == {"XFormersAttnProcessor"}
