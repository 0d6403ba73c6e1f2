"""``compile: regional``: which blocks of each family's denoiser are compiled (the compile itself
is recorded, not run; ``tests/training/test_trainer.py`` trains compiled models, marked slow)."""

import pytest
import torch

from diffalign.families import FamilyError, load

REPEATED = {"sd15": "BasicTransformerBlock", "sdxl": "BasicTransformerBlock", "sd3": "JointTransformerBlock"}


@pytest.mark.parametrize("kind", sorted(REPEATED))
def test_every_repeated_block_and_nothing_else_is_compiled(kind, tiny_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    family = load(tiny_path(kind))
    family.compile_repeated_blocks()
    blocks = [m for m in family.denoiser.modules() if type(m).__name__ == REPEATED[kind]]
    assert blocks and len(compiled) == len(blocks)
    assert all(any(m is b for b in blocks) for m in compiled)


def test_a_denoiser_without_repeated_blocks_is_a_clear_error(tiny_path, monkeypatch):
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: None)
    family = load(tiny_path("sd3"))
    monkeypatch.setattr(type(family), "repeated_blocks", ("NoSuchBlock",))
    with pytest.raises(FamilyError, match="use compile: true"):
        family.compile_repeated_blocks()
