"""``compile: auto`` (diffalign.training.setup.compile_mode): regional only where a run is long
enough for the first compile to pay, the denoiser has repeated blocks and the device a compiler;
the start-up says which and why; the compile cache is kept between runs."""

import os
from types import SimpleNamespace

import pytest
import torch

from diffalign.training import setup
from diffalign.training.setup import COMPILE_PAYS_AFTER, compile_mode, keep_compile_cache


class _Family:
    name = "toy"

    def __init__(self, blocks):
        self.blocks = blocks

    def repeated_block_modules(self):
        return self.blocks


def _config(compile="auto", max_steps=COMPILE_PAYS_AFTER, accumulation=1):
    return SimpleNamespace(compile=compile, max_steps=max_steps, gradient_accumulation_steps=accumulation)


CPU = torch.device("cpu")


def test_a_long_run_with_repeated_blocks_compiles_them(monkeypatch):
    monkeypatch.setattr(setup, "_missing_compiler", lambda device: None)
    mode, why = compile_mode(_config(max_steps=COMPILE_PAYS_AFTER), _Family([torch.nn.Linear(1, 1)]), CPU)
    assert mode == "regional" and f"{COMPILE_PAYS_AFTER} micro-batches pay" in why
    # Accumulation counts: the compile saves on every micro-batch, not on every optimiser step.
    assert compile_mode(_config(max_steps=1, accumulation=COMPILE_PAYS_AFTER), _Family([torch.nn.Linear(1, 1)]),
                        CPU)[0] == "regional"


@pytest.mark.parametrize("compile", [False, True, "regional"])
def test_an_explicit_choice_is_kept(compile):
    assert compile_mode(_config(compile, max_steps=1), _Family([]), CPU)[0] == compile


def test_a_short_run_does_not_compile_and_says_why():
    mode, why = compile_mode(_config(max_steps=COMPILE_PAYS_AFTER - 1), _Family([torch.nn.Linear(1, 1)]), CPU)
    assert mode is False and f"{COMPILE_PAYS_AFTER - 1} micro-batches" in why and "regional compiles anyway" in why


def test_no_repeated_blocks_or_no_compiler_means_no_compile(monkeypatch):
    mode, why = compile_mode(_config(), _Family([]), CPU)
    assert mode is False and "names no repeated blocks" in why
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    mode, why = compile_mode(_config(), _Family([torch.nn.Linear(1, 1)]), CPU)
    assert mode is False and "no C++ compiler (no-such-compiler-here)" in why


def test_the_compile_cache_goes_under_the_user_cache_unless_set(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    keep_compile_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "diffalign" / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/mine")
    keep_compile_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/mine"
