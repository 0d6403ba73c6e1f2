"""The update loop (diffalign.training.update): micro-batches of different sizes give the gradient
of one batch of all of them, on one process and on two, and a SIGTERM between two micro-batches
stops after that update and resumes to the weights of an uninterrupted run."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffalign.training.update import TrainingError

sys.path.insert(0, str(Path(__file__).parent))
import toy_updates  # noqa: E402


def _check(results: dict) -> None:
    straight, stopped, resumed = results["straight"], results["stopped"], results["resumed"]
    want = toy_updates.expected_first_update(straight["w0"], straight["first_collection"])
    torch.testing.assert_close(straight["w1"], want, rtol=0, atol=1e-6)
    assert stopped["stopped"] and stopped["update"] == toy_updates.STOP_IN  # the update in flight completed
    assert resumed["update"] == straight["update"] == 5 and not resumed["stopped"]
    torch.testing.assert_close(resumed["final"], straight["final"], rtol=0, atol=0)


def test_one_process(tmp_path):
    results = {name: toy_updates.run(tmp_path, name) for name in toy_updates.RUNS}
    _check(results)
    # The micro-batches weigh by size: equal shares (3 and 5 rows as halves) would land elsewhere.
    w0, rows = results["straight"]["w0"], results["straight"]["first_collection"]
    halves = (toy_updates.expected_first_update(w0, rows[:3]) + toy_updates.expected_first_update(w0, rows[3:])) / 2
    assert (results["straight"]["w1"] - halves).abs().max() > 1e-3


@pytest.mark.slow  # 30 s of two launches; the trainer's two-process tests are slow too (test_train_multiprocess.py)
def test_two_processes(tmp_path):
    for names in (["straight", "stopped"], ["resumed"]):  # the stopped run ends its launch's process group
        command = [shutil.which("accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                   "--main_process_port", "0", str(Path(toy_updates.__file__)), str(tmp_path), *names]
        run = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
    ranks = [{name: torch.load(tmp_path / f"{name}-{rank}.pt", weights_only=False) for name in toy_updates.RUNS}
             for rank in (0, 1)]
    for results in ranks:
        assert results["straight"]["first_collection"].shape == (2 * toy_updates.ROWS, toy_updates.FEATURES + 1)
        _check(results)
    # Each process drew its own rows, and both hold the same weights (one all-reduced gradient).
    assert not torch.equal(*ranks[0]["straight"]["first_collection"].chunk(2))
    torch.testing.assert_close(ranks[0]["resumed"]["final"], ranks[1]["resumed"]["final"], rtol=0, atol=0)


def test_every_update_skipped_in_a_row_stops(tmp_path):
    from accelerate import Accelerator

    from diffalign.steps.base import MicroBatch
    from diffalign.training.update import UpdateLoop, UpdateSettings

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    loop = UpdateLoop(accelerator, model, optimizer, scheduler, tmp_path, UpdateSettings(10, max_nonfinite=3),
                      model.parameters)
    nothing = iter(lambda: [MicroBatch(lambda: None)], None)  # every micro-batch unreadable
    with pytest.raises(TrainingError, match="3 updates in a row"):
        loop.run(nothing)
    assert loop.state["skipped_steps"] == 3 and loop.update == 2
