"""The reference computed once (diffalign.training.reference_pass): training with the stored
reference errors gives the losses and weights of the on-the-fly path, runs no reference forward,
and a later run on the same data and seed (another β, a resume) reads the pass instead of
computing it again."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffalign.cli import main
from diffalign.families.reference import Reference
from diffalign.training import reference_pass

CONFIG = Path(__file__).resolve().parents[2] / "training" / "configs" / "tiny" / "diffusion_dpo.yaml"


def _args(tiny_path, kind, data, out, *extra):
    return ["train", "--config", str(CONFIG), f"model.path={tiny_path(kind)}", f"data.path={data}",
            f"output_dir={out}", "max_steps=3", "logging.progress_bar=false", "objective.beta=500", *extra]


def _losses(out):
    return [json.loads(line)["train/loss"] for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _weights(out, mode):
    return load_file(str(Path(out) / ("lora/pytorch_lora_weights.safetensors" if mode == "lora" else
                                      next((Path(out) / "final").iterdir()) / "diffusion_pytorch_model.safetensors")))


@pytest.fixture
def count_reference(monkeypatch):
    """How many times a reference forward was entered, from the moment it is asked."""
    calls = []
    active = Reference.active

    def counted(self):
        calls.append(1)
        return active(self)

    monkeypatch.setattr(Reference, "active", counted)
    return calls


@pytest.mark.parametrize("kind", ["sd15", pytest.param("sdxl", marks=pytest.mark.slow),
                                  pytest.param("sd3", marks=pytest.mark.slow)])
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_the_stored_reference_gives_the_losses_of_the_on_the_fly_one(kind, mode, tiny_path, plain_pair_data,
                                                                      tmp_path, count_reference):
    """3 updates of Diffusion-DPO, uncached, batches of 2 over 4 rows: 2 epochs of 2 batches."""
    extra = ["data.cache=false", "batch_size=2", "reference_pass=true"] + (
        ["lora=null", "optim.lr=1e-5"] if mode == "full" else [])
    data = tmp_path / "data"
    import shutil

    shutil.copytree(plain_pair_data, data)
    assert main(_args(tiny_path, kind, data, tmp_path / "on-the-fly", *extra, "reference_pass=false")) == 0
    on_the_fly = len(count_reference)
    assert on_the_fly == 3  # one reference forward per micro-batch
    count_reference.clear()
    assert main(_args(tiny_path, kind, data, tmp_path / "once", *extra)) == 0
    assert len(count_reference) == 4  # the pass: 2 epochs × 2 batches; training: none
    want, got = _losses(tmp_path / "on-the-fly"), _losses(tmp_path / "once")
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=0, atol=1e-6)
    a, b = _weights(tmp_path / "on-the-fly", mode), _weights(tmp_path / "once", mode)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    stored = sorted((data / "cache" / "reference").glob("*/epoch-*.safetensors"))
    assert [p.name for p in stored] == ["epoch-00000-rank-0.safetensors", "epoch-00001-rank-0.safetensors"]


def test_a_sweep_and_a_resume_read_the_pass_and_another_seed_makes_its_own(tiny_path, plain_pair_data, tmp_path,
                                                                           count_reference, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(plain_pair_data, data)
    extra = ["data.cache=false", "batch_size=2", "reference_pass=true"]
    assert main(_args(tiny_path, "sd15", data, tmp_path / "a", *extra)) == 0
    assert "reference pass: 2 of 2 epoch(s) to compute" in capsys.readouterr().out
    count_reference.clear()
    # another β and learning rate: the same batches, the same reference errors
    assert main(_args(tiny_path, "sd15", data, tmp_path / "b", "objective.beta=2000", "optim.lr=3e-4", *extra)) == 0
    assert "reference pass: reading" in capsys.readouterr().out and count_reference == []
    # a resumed run reads it too, and ends where an uninterrupted one does
    assert main(_args(tiny_path, "sd15", data, tmp_path / "c", "checkpoint_every=1", "max_steps=2", *extra)) == 0
    assert main(_args(tiny_path, "sd15", data, tmp_path / "c", "resume=latest", *extra)) == 0
    assert count_reference == []
    torch.testing.assert_close(torch.tensor(_losses(tmp_path / "c")), torch.tensor(_losses(tmp_path / "a")),
                               rtol=0, atol=1e-6)
    # another seed draws other noise: another pass, beside the first, never the first reused
    assert main(_args(tiny_path, "sd15", data, tmp_path / "d", "seed=1", *extra)) == 0
    assert "reference pass: 2 of 2 epoch(s) to compute" in capsys.readouterr().out
    keys = [json.loads(p.read_text()) for p in sorted((data / "cache" / "reference").glob("*/key.json"))]
    assert sorted(k["seed"] for k in keys) == [0, 1]


def test_where_it_does_not_apply_it_says_why():
    from diffalign.config import DataConfig, ModelConfig, TrainConfig
    from diffalign.objectives import build_objective

    config = TrainConfig(model=ModelConfig(path="m"), data=DataConfig(path="d"))
    assert reference_pass.problem(config, build_objective({"name": "diffusion_dpo"})) is None
    assert "uncached" in reference_pass.problem(config, build_objective({"name": "diffusion_dpo"}), cached=False)
    assert "no reference model" in reference_pass.problem(config, build_objective({"name": "mapo"}))
    assert "inversion step" in reference_pass.problem(config, build_objective({"name": "inpo"}))
    assert "spo step" in reference_pass.problem(config, build_objective({"name": "spo"}))
    off = TrainConfig(model=ModelConfig(path="m"), data=DataConfig(path="d"), reference_pass=False)
    assert reference_pass.problem(off, build_objective({"name": "diffusion_dpo"})) == "reference_pass is false"


def test_full_fine_tuning_lets_the_frozen_copy_go(tiny_path, plain_pair_data, tmp_path):
    """With the errors stored, the frozen copy of the denoiser (as large as the model) is freed
    before training: the tiny SD1.5 UNet's parameters, no longer held twice."""
    import gc
    import shutil

    from diffalign.config import load_config
    from diffalign.training import Trainer

    data = tmp_path / "data"
    shutil.copytree(plain_pair_data, data)
    config = load_config(CONFIG, [f"model.path={tiny_path('sd15')}", f"data.path={data}", f"output_dir={tmp_path / 'run'}",
                                  "lora=null", "max_steps=1", "data.cache=false", "reference_pass=true",
                                  "logging.progress_bar=false"])
    trainer = Trainer(config)
    assert trainer.step.reference_table is not None and trainer.reference.module is None
    with pytest.raises(RuntimeError, match="released"):
        with trainer.reference.active():
            pass
    assert trainer.run().steps == 1
    gc.collect()
