"""What a checkpoint holds: under LoRA the adapters, their optimiser state and the trainer's
state, not the frozen base (which ``model.path`` already holds); under full fine-tuning every
weight. Resuming from either is exact (tests/training/test_resume.py)."""

from pathlib import Path

import pytest
from safetensors.torch import load_file

from diffalign.cli import main
from diffalign.training import checkpoint

CONFIG = Path(__file__).resolve().parents[2] / "training" / "configs" / "tiny" / "diffusion_dpo.yaml"


def _checkpoint(tiny_path, kind, data, out, *extra) -> Path:
    assert main(["train", "--config", str(CONFIG), f"model.path={tiny_path(kind)}", f"data.path={data}",
                 f"output_dir={out}", "max_steps=1", "checkpoint_every=1", "data.cache=false",
                 "logging.progress_bar=false", *extra]) == 0
    return checkpoint.path_for(out / "checkpoints", 1)


@pytest.mark.parametrize("kind", ["sd15", "sd3"])
def test_a_lora_checkpoint_holds_the_adapters_not_the_base(kind, tiny_path, pair_data, tmp_path):
    lora = _checkpoint(tiny_path, kind, pair_data, tmp_path / "lora")
    full = _checkpoint(tiny_path, kind, pair_data, tmp_path / "full", "lora=null")
    lora_keys, full_keys = set(load_file(str(lora / "model.safetensors"))), set(load_file(str(full / "model.safetensors")))
    assert lora_keys and all("lora_" in k for k in lora_keys)  # adapters only
    assert not any("lora_" in k for k in full_keys) and len(full_keys) > len(lora_keys)  # every weight
    size = lambda folder: sum(p.stat().st_size for p in folder.iterdir())  # noqa: E731
    assert (lora / "model.safetensors").stat().st_size < 0.1 * (full / "model.safetensors").stat().st_size
    assert size(lora) < size(full)
