"""Training the step-aware preference model on pairs: the loss and labels by hand, the held-out
split, a run with held-out accuracy whose resume equals an uninterrupted run, and early stopping
on the held-out loss, whose stop and resume also equals an uninterrupted run (tiny models)."""

import importlib.util
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffalign.rewards.step_aware import StepAwarePreferenceModel
from diffalign.training.step_aware import (SPMTrainConfig, pair_labels, pair_losses, spm_pair_loss, split_heldout,
                                          train_step_aware)

ROOT = Path(__file__).resolve().parents[2]


def test_the_pair_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.5, 0.5]])
    each = [math.log(1 + math.exp(-2)), 0.0,
            -0.5 * math.log(1 / (1 + math.exp(-1))) - 0.5 * math.log(1 / (1 + math.exp(1))) + math.log(0.5)]
    assert spm_pair_loss(logits, labels).item() == pytest.approx(sum(each) / 3, abs=1e-6)
    assert pair_losses(logits, labels).tolist() == pytest.approx(each, abs=1e-6)  # what the held-out loss averages
    weights = torch.tensor([1.0, 1.0, 2.0])  # normalised to 1/4, 1/4, 1/2
    assert spm_pair_loss(logits, labels, weights).item() == pytest.approx(each[0] / 4 + each[2] / 2, abs=1e-6)


def test_labels_follow_the_ranks_and_ties():
    assert pair_labels({"ids": ["a", "b"], "ranks": torch.tensor([[0, 1], [0, 0]])}).tolist() == [[1.0, 0.0], [0.5, 0.5]]
    assert pair_labels({"ids": ["a"], "ranks": None}).tolist() == [[1.0, 0.0]]


def test_the_heldout_split_depends_only_on_the_ids():
    ids = [f"row{i}" for i in range(20)]
    train, held = split_heldout(ids, 0.25)
    assert len(held) == 5 and sorted(train + held) == list(range(20))
    shuffled = ids[::-1]
    _, held_again = split_heldout(shuffled, 0.25)
    assert {shuffled[i] for i in held_again} == {ids[i] for i in held}
    assert split_heldout(ids, 0.0) == (list(range(20)), [])


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A tiny SD1.5 pipeline, a tiny CLIP to start from and ten 32 px pairs (every third a tie,
    two rows sharing a prompt)."""
    from diffalign.rewards.tiny import save_tiny_clip
    from diffalign.testing import save_tiny_pipeline, write_handmade_dataset

    root = tmp_path_factory.mktemp("spm")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(10):
        images = []
        for _ in range(2):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
            images.append({"bytes": buffer.getvalue(), "path": None})
        rows.append({"id": f"p{i}", "prompt": "a red cat" if i < 2 else f"a blue dog {i}", "images": images,
                     "ranks": [0, 0] if i % 3 == 0 else [0, 1]})
    return {"base": save_tiny_pipeline("sd15", root / "sd15"), "clip": save_tiny_clip(root / "clip"),
            "data": write_handmade_dataset(root / "pairs", rows), "root": root}


def _script():
    spec = importlib.util.spec_from_file_location("train_step_aware", ROOT / "reward_models" / "train_step_aware.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _steps(out: Path) -> list[dict]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if "step" in line and "loss" in line]


def test_training_writes_accuracy_and_a_resumed_run_equals_an_uninterrupted_one(tiny_setup, capsys):
    root = tiny_setup["root"]
    args = ["--data", str(tiny_setup["data"]), "--base-model", str(tiny_setup["base"]), "--init", str(tiny_setup["clip"]),
            "--steps", "4", "--batch-size", "2", "--lr", "1e-3", "--warmup-steps", "1", "--resolution", "32",
            "--heldout-fraction", "0.2", "--checkpoint-every", "2", "--eval-batch-size", "4", "--eval-times", "0", "0.5", "0.9"]
    # uninterrupted, through the script
    assert _script().main(args + ["--out", str(root / "whole")]) == 0
    whole = root / "whole"
    assert "held-out pair accuracy at step 4" in capsys.readouterr().out
    report = json.loads((whole / "heldout_accuracy.json").read_text())
    assert report["pairs"] == 2 and set(report["accuracy"]) == {"0.0000", "0.5000", "0.9000"}
    assert all(0 <= a <= 1 for a in report["accuracy"].values())
    assert report["mean"] == pytest.approx(sum(report["accuracy"].values()) / 3)
    assert set(report["loss"]) == set(report["accuracy"]) and all(x >= 0 for x in report["loss"].values())
    assert report["mean_loss"] == pytest.approx(sum(report["loss"].values()) / 3)
    losses = [line["loss"] for line in _steps(whole)]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    trained = StepAwarePreferenceModel.from_pretrained(whole / "final")
    start = StepAwarePreferenceModel.from_clip(tiny_setup["clip"])
    assert not torch.equal(trained.time.layers[0].weight, start.time.layers[0].weight)  # it trained

    # stopped after step 2, then resumed to 4
    config, _ = _script().parse(args + ["--out", str(root / "parts")])
    assert train_step_aware(config, stop_after=2, progress=False)["step"] == 2
    assert (root / "parts" / "checkpoints" / "checkpoint-0000002").is_dir() and not (root / "parts" / "final").exists()
    config.resume = "latest"
    train_step_aware(config, progress=False)
    parts = _steps(root / "parts")
    assert [line["step"] for line in parts] == [1, 2, 3, 4]  # nothing repeated, nothing skipped
    assert [line["loss"] for line in parts] == losses
    resumed = StepAwarePreferenceModel.from_pretrained(root / "parts" / "final")
    for (name, a), b in zip(trained.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert json.loads((root / "parts" / "heldout_accuracy.json").read_text())["accuracy"] == report["accuracy"]


def test_resume_refuses_other_settings(tiny_setup, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints" / "checkpoint-0000002").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint-0000002" / "trainer_state.json").write_text('{"step": 2}')
    config = SPMTrainConfig(data=str(tiny_setup["data"]), base_model=str(tiny_setup["base"]), out=str(out), resume="latest")
    (out / "config.json").write_text(json.dumps({**config.to_dict(), "batch_size": 3}))
    with pytest.raises(ValueError, match="batch_size"):
        train_step_aware(config)


def _weights(folder: Path) -> dict:
    return StepAwarePreferenceModel.from_pretrained(folder).state_dict()


def test_early_stopping_keeps_the_best_weights_and_a_stopped_run_resumes_to_the_same_end(tiny_setup):
    """The held-out loss of this tiny run falls for a few steps and then rises (it fits noise):
    with patience 2 it stops two evaluations after its best, final/ holds the best step's weights
    (those of that step's checkpoint), and a run stopped between the best step and the stop,
    then resumed, stops at the same step with the same history and final/."""
    root = tiny_setup["root"]

    def config(name: str, **changes) -> SPMTrainConfig:
        return SPMTrainConfig(data=str(tiny_setup["data"]), base_model=str(tiny_setup["base"]), out=str(root / name),
                              init=str(tiny_setup["clip"]), steps=8, batch_size=2, lr=1e-3, warmup_steps=1,
                              resolution=32, heldout_fraction=0.2, eval_every=1, patience=2, eval_batch_size=4,
                              eval_times=(0, 0.5, 0.9), checkpoint_every=1, keep_checkpoints=10, **changes)

    whole = train_step_aware(config("early"), progress=False)
    history = whole["history"]
    losses = [entry["heldout_loss"] for entry in history]
    best = history[losses.index(min(losses))]["step"]
    assert whole["stopped_early"] and whole["step"] == best + 2 < 8, history  # it stopped, two evaluations late
    assert [entry["step"] for entry in history] == list(range(1, whole["step"] + 1))
    assert whole["best"]["step"] == best and whole["best"]["mean_loss"] == min(losses)
    assert whole["heldout"]["step"] == best and set(whole["best"]["accuracy"]) == {"0.0000", "0.5000", "0.9000"}
    saved = json.loads((root / "early" / "heldout_history.json").read_text())
    assert saved["best_step"] == best and saved["history"] == history and saved["stopped_early"]
    assert [line["step"] for line in _steps(root / "early")] == list(range(1, whole["step"] + 1))
    # final/ is the best step's model, not the last step's
    from safetensors.torch import load_file

    final = _weights(root / "early" / "final")
    for step, same in ((best, True), (whole["step"], False)):
        state = load_file(str(root / "early" / "checkpoints" / f"checkpoint-{step:07d}" / "model.safetensors"))
        assert all(torch.equal(final[k], state[k]) for k in final) == same, step

    # stopped after the best step, before the stop: the best weights must come from the checkpoint
    parts = config("early-parts")
    assert train_step_aware(parts, stop_after=best + 1, progress=False)["step"] == best + 1
    assert not (root / "early-parts" / "final").exists()
    parts.resume = "latest"
    resumed = train_step_aware(parts, progress=False)
    assert {k: resumed[k] for k in ("step", "history", "best", "stopped_early")} == \
        {k: whole[k] for k in ("step", "history", "best", "stopped_early")}
    assert [line["loss"] for line in _steps(root / "early-parts")] == [line["loss"] for line in _steps(root / "early")]
    for (name, a), b in zip(final.items(), _weights(root / "early-parts" / "final").values()):
        assert torch.equal(a, b), name
    # resuming a run that stopped early takes no step and reports the same end
    again = train_step_aware(parts, progress=False)
    assert again["step"] == whole["step"] and again["loss"] is None and again["best"] == whole["best"]
    assert len(_steps(root / "early-parts")) == whole["step"]


def test_the_script_passes_the_early_stopping_settings():
    base = ["--data", "d", "--base-model", "b", "--out", "o"]
    config, _ = _script().parse(base)
    assert (config.patience, config.min_delta, config.keep_best, config.selects_best) == (None, 0.0, None, False)
    config, _ = _script().parse(base + ["--eval-every", "50", "--patience", "3", "--min-delta", "0.01", "--no-keep-best"])
    assert (config.eval_every, config.patience, config.min_delta, config.keep_best) == (50, 3, 0.01, False)
