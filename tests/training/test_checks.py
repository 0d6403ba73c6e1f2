"""Start-up checks: `check-config` refuses exactly what `train` refuses, before any model loads,
and every refusal is one `error:` line that names the fix, not a traceback."""

import json
from pathlib import Path

import pytest

from diffalign.cli import main
from diffalign.data.writer import ShardWriter

CONFIG = Path(__file__).resolve().parents[2] / "training" / "configs" / "tiny" / "diffusion_dpo.yaml"


@pytest.fixture
def no_model_loads(monkeypatch):
    import diffalign.families

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the start-up checks")

    monkeypatch.setattr(diffalign.families, "load", refuse)


def _both(capsys, *args) -> tuple[tuple[int, str], tuple[int, str]]:
    """(exit status, stderr) of `check-config CONFIG args` and of `train --config CONFIG args`."""
    capsys.readouterr()  # what the fixtures printed
    checked = main(["check-config", str(CONFIG), *args]), capsys.readouterr().err
    trained = main(["train", "--config", str(CONFIG), *args]), capsys.readouterr().err
    return checked, trained


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["objective.name=diffusion_dop"], "unknown objective 'diffusion_dop' (did you mean 'diffusion_dpo'?)"),
        (["objective.betta=1"], "objective.betta: unknown key (did you mean 'objective.beta'?)"),
        (["batch_size=0"], "batch_size: expected a value ≥ 1, got 0"),
        (["optim.lr=-1e-4"], "optim.lr: expected a value ≥ 0, got -0.0001"),
        (["optim.betas=[0.9,1.0]"], "optim.betas: expected a value in [0, 1), got 1.0"),
        (["data.resolution=33"], "data.resolution: 33 is not a multiple of 2"),
        (["compile=false", "compile_memory_budget=0.5"], "compile_memory_budget: 0.5 needs compile: true"),
        (["compile=true", "compile_memory_budget=0"], "a value in (0, 1]"),
        (["resume=latest", "overwrite=true"], "resume and overwrite contradict each other"),
        # sizes with an upper bound, and checked against the memory a batch takes
        (["data.resolution=100000"], "data.resolution: expected a value in [8, 16384], got 100000"),
        (["validation.resolution=0"], "validation.resolution: expected a value in [8, 16384], got 0"),
        (["data.resolution=16384", "batch_size=256"], "of memory for its tensors alone"),
        # numbers that parse but are no numbers
        (["optim.lr=.inf"], "optim.lr: expected a finite number, got inf"),
        (["objective.beta=.nan"], "objective.beta: expected a finite number, got nan"),
        (["seed=-1"], "seed: expected a value in [0, "),
        # an output folder among the inputs
        (["output_dir={data}/run"], "lies inside the input data.path"),
        (["output_dir={model}"], "is the input model.path"),
        (["resume=/does/not/exist"], "resume: /does/not/exist cannot be resumed from: no such folder"),
    ],
)
def test_check_config_refuses_what_train_refuses(overrides, message, tiny_path, pair_data, tmp_path, capsys,
                                                 no_model_loads):
    common = [f"model.path={tiny_path('sd15')}", f"data.path={pair_data}", f"output_dir={tmp_path / 'run'}"]
    overrides = [o.format(data=pair_data, model=tiny_path("sd15")) for o in overrides]
    before = sorted(p.name for p in Path(pair_data).rglob("*"))
    (checked, check_err), (trained, train_err) = _both(capsys, *common, *overrides)
    assert sorted(p.name for p in Path(pair_data).rglob("*")) == before
    assert checked == trained == 1
    assert message in check_err and check_err == train_err
    assert check_err.startswith("error: ") and "Traceback" not in check_err
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("objective", ["smpo", "rank_dpo"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_scores_an_objective_learns_from_must_be_finite(objective, bad, tiny_path, tmp_path, capsys, no_model_loads):
    k = 2 if objective == "smpo" else 3
    writer = ShardWriter(tmp_path / "prefs", builder="test", options={})
    for i in range(3):
        scores = [float(k - j) for j in range(k)]
        if i == 1:
            scores[-1] = bad
        writer.add({"id": f"g{i}", "prompt": "a cat", "images": [{"bytes": b"x", "path": None}] * k, "scores": scores,
                    "ranks": list(range(k)), "captions": None, "source": "test", "meta": None})
        writer.advance(i + 1)
    writer.finish({"group_size": k})
    args = [f"model.path={tiny_path('sd15')}", f"data.path={tmp_path / 'prefs'}", f"output_dir={tmp_path / 'run'}",
            f"objective.name={objective}"]
    capsys.readouterr()
    assert main(["check-config", str(CONFIG), *args]) == 1
    err = capsys.readouterr().err
    assert f"{objective} learns from the scores column, and 1 row(s)" in err and "(g1)" in err, err


def test_check_config_prints_a_valid_config(tiny_path, pair_data, tmp_path, capsys, no_model_loads):
    args = [f"model.path={tiny_path('sd15')}", f"data.path={pair_data}", f"output_dir={tmp_path}", "optim.lr=3e-6"]
    assert main(["check-config", str(CONFIG), *args]) == 0
    assert "lr: 3.0e-06" in capsys.readouterr().out
    assert main(["check-config", str(CONFIG), *args, "optim.lrr=1"]) == 1
    assert "did you mean 'optim.lr'" in capsys.readouterr().err


def test_a_dataset_without_rows_is_refused_before_the_model_loads(tiny_path, tmp_path, capsys, no_model_loads):
    writer = ShardWriter(tmp_path / "empty", builder="test", options={})
    writer.drop("tie")
    writer.advance(1)
    writer.finish({"group_size": 2})
    status = main(["train", "--config", str(CONFIG), f"model.path={tiny_path('sd15')}", f"data.path={tmp_path / 'empty'}",
                   f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert status == 1 and "has no rows (its builder dropped every source row: {'tie': 1})" in err
    assert "Traceback" not in err


def test_a_cache_of_another_model_is_refused_before_the_model_loads(tiny_path, pair_data, tmp_path, capsys,
                                                                    monkeypatch):
    """The cache check needs only the model's files, so it runs with the other start-up checks."""
    import shutil

    from diffalign.data.cache import build_cache
    from diffalign.families import load
    from diffalign.testing import save_tiny_pipeline

    data = tmp_path / "prefs"
    shutil.copytree(pair_data, data)
    build_cache(data, load(save_tiny_pipeline("sd15", tmp_path / "other", seed=1)), resolution=32, progress=False)
    import diffalign.families

    monkeypatch.setattr(diffalign.families, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    capsys.readouterr()
    status = main(["train", "--config", str(CONFIG), f"model.path={tiny_path('sd15')}", f"data.path={data}",
                   f"output_dir={tmp_path / 'run'}", "data.cache=true"])
    err = capsys.readouterr().err
    assert status == 1 and err.startswith("error: ") and "whose VAE or text encoders differ" in err
    assert "rebuild it with `diffalign cache" in err


def test_training_error_is_one_line_not_a_traceback(tiny_path, pair_data, tmp_path, capsys):
    """beta = 1e30: the gradient norm overflows at every step; each step is skipped and counted,
    and a run whose every step was skipped fails instead of reporting success."""
    status = main(["train", "--config", str(CONFIG), f"model.path={tiny_path('sd15')}", f"data.path={pair_data}",
                   f"output_dir={tmp_path / 'run'}", "objective.beta=1e30", "max_steps=4"])
    err = capsys.readouterr().err
    assert status == 1 and "every one of the 4 steps was skipped" in err and "Traceback" not in err
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped_steps"] == 4
    assert not (tmp_path / "run" / "lora").exists()  # nothing trained, nothing passed off as trained


def test_a_refused_pickle_is_one_error_line(tmp_path, capsys, pair_data):
    """A reward checkpoint that needs unpickling code is refused; the builder says so in one line."""
    import torch

    (tmp_path / "hps").mkdir()
    torch.save({"state_dict": {"x": torch.zeros(1)}, "object": Pickled()}, tmp_path / "hps" / "HPS_v2.1_compressed.pt")
    status = main(["build", "filter", str(pair_data), "--out", str(tmp_path / "out"), "--reward", "hpsv2.1",
                   "--reward-path", str(tmp_path / "hps")])
    err = capsys.readouterr().err
    assert status == 1 and err.startswith("error: ") and "tensors-only" in err and "Traceback" not in err
    assert "it pickles tests.training.test_checks.Pickled" in err or "it pickles test_checks.Pickled" in err
    assert len(err.strip().splitlines()) == 1


class Pickled:
    """An object torch.load(weights_only=True) must refuse to rebuild."""
