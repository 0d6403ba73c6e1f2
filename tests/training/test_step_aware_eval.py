"""The held-out record early stopping reads (best by loss, patience, min_delta, NaN, the best
weights, its checkpoint round trip) and the settings around it, without training anything."""

import json
import math

import pytest
import torch

from diffalign.training.step_aware import SPMTrainConfig, _check_same_settings
from diffalign.training.step_aware_eval import HeldoutRecord


def _result(step: int, loss: float, accuracy: float = 0.5) -> dict:
    return {"step": step, "pairs": 4, "accuracy": {"0.5000": accuracy}, "loss": {"0.5000": loss},
            "ddpm_index": {"0.5000": 500}, "mean": accuracy, "mean_loss": loss}


def _feed(record: HeldoutRecord, losses: list[float], first: int = 1) -> list[bool]:
    """Record one evaluation per loss (steps ``first``, ``first + 1``, ...), each with weights
    ``{"w": [step]}``, until the record says stop; returns what each ``record`` returned."""
    improved = []
    for step, loss in enumerate(losses, first):
        if record.stopped:
            break
        improved.append(record.record(_result(step, loss), lambda step=step: {"w": torch.tensor([float(step)])}))
    return improved


def test_the_best_is_the_lowest_loss_and_patience_counts_evaluations_without_improvement():
    record = HeldoutRecord(patience=2, keep_best=True)
    assert _feed(record, [0.7, 0.5, 0.6, 0.55, 0.4]) == [True, True, False, False]  # stops before 0.4
    assert record.stopped and record.since_best == 2 and record.best["step"] == 2
    assert record.weights["w"].item() == 2.0  # copied at the best evaluation, not at the last
    assert record.final["step"] == 2 and record.last["step"] == 4
    assert [h["heldout_loss"] for h in record.history] == [0.7, 0.5, 0.6, 0.55]
    summary = record.summary()
    assert summary["best_step"] == 2 and summary["best"]["mean_loss"] == 0.5 and summary["stopped_early"]
    json.dumps(summary)  # written as heldout_history.json


def test_an_improvement_resets_the_count_and_min_delta_ignores_small_ones():
    record = HeldoutRecord(patience=2)
    _feed(record, [0.7, 0.8, 0.6, 0.65, 0.5, 0.9, 0.9])  # 0.8 then 0.6: the count went back to 0
    assert record.best["step"] == 5 and record.history[-1]["step"] == 7 and record.stopped
    small = HeldoutRecord(patience=2, min_delta=0.05)
    assert _feed(small, [0.70, 0.68, 0.66, 0.6]) == [True, False, False]  # 0.02 and 0.04 are not improvements
    assert small.best["step"] == 1


def test_nan_never_improves_no_patience_never_stops_and_the_last_step_is_no_early_stop():
    record = HeldoutRecord(patience=1)
    assert _feed(record, [math.nan]) == [False] and record.best is None and record.stopped
    endless = HeldoutRecord()
    _feed(endless, [0.5] + [0.9] * 20)
    assert not endless.stopped and endless.since_best == 20
    assert endless.weights == {} and endless.final["step"] == 21  # no keep_best: the last one is final
    last = HeldoutRecord(patience=1)
    last.record(_result(1, 0.5))
    last.record(_result(2, 0.9), can_stop=False)  # the run's last step: it ends anyway
    assert not last.stopped and last.since_best == 1


def test_the_record_and_the_best_weights_survive_a_checkpoint_round_trip():
    losses = [0.7, 0.5, 0.6, 0.45, 0.5, 0.55]
    whole = HeldoutRecord(patience=2, keep_best=True)
    _feed(whole, losses)
    first = HeldoutRecord(patience=2, keep_best=True)
    _feed(first, losses[:3])
    state = first.state_dict()
    assert state["record"].dtype == torch.uint8 and set(state) == {"record", "best.w"}
    from safetensors.torch import load, save

    second = HeldoutRecord(patience=2, keep_best=True)
    second.load_state_dict(load(save(state)))  # as the checkpoint writes and reads it
    _feed(second, losses[3:], first=4)
    assert second.summary() == whole.summary() and second.weights["w"].item() == whole.weights["w"].item() == 4.0
    empty = HeldoutRecord(patience=2)
    empty.load_state_dict({})  # a checkpoint written before runs kept a record
    assert empty.history == [] and empty.best is None and not empty.stopped


def test_patience_settings_are_checked_and_keep_best_follows_patience():
    base = {"data": "d", "base_model": "b", "out": "o"}
    assert not SPMTrainConfig(**base).selects_best  # today's behaviour: final/ is the last step's model
    assert SPMTrainConfig(**base, patience=3, eval_every=100).selects_best
    assert not SPMTrainConfig(**base, patience=3, eval_every=100, keep_best=False).selects_best
    assert SPMTrainConfig(**base, keep_best=True).selects_best
    with pytest.raises(ValueError, match="eval_every"):
        SPMTrainConfig(**base, patience=3)
    with pytest.raises(ValueError, match="patience"):
        SPMTrainConfig(**base, patience=0, eval_every=10)
    with pytest.raises(ValueError, match="heldout_fraction"):
        SPMTrainConfig(**base, keep_best=True, heldout_fraction=0.0)


def test_resume_takes_a_run_saved_before_these_settings_and_fixes_the_evaluation_under_patience(tmp_path):
    base = {"data": "d", "base_model": "b", "out": str(tmp_path)}
    old = SPMTrainConfig(**base).to_dict()
    for key in ("patience", "min_delta", "keep_best"):
        del old[key]
    (tmp_path / "config.json").write_text(json.dumps(old))
    _check_same_settings(SPMTrainConfig(**base, eval_every=50), tmp_path)  # defaults then, free to change
    (tmp_path / "config.json").write_text(json.dumps(SPMTrainConfig(**base, patience=2, eval_every=10).to_dict()))
    _check_same_settings(SPMTrainConfig(**base, patience=2, eval_every=10, checkpoint_every=7), tmp_path)
    for change in ({"eval_every": 20}, {"eval_times": (0.5,)}, {"eval_batch_size": 4}, {"patience": 3}):
        with pytest.raises(ValueError, match=next(iter(change))):
            _check_same_settings(SPMTrainConfig(**{**base, "patience": 2, "eval_every": 10, **change}), tmp_path)
