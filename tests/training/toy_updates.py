"""A toy producer of updates for the update loop (``diffalign.training.update``): it collects 8
rows once every two updates, and makes each update from two micro-batches of different sizes
(3 and 5 rows) of its collection. The collection is what it carries from one update to the next,
so a resumed run must train on the collection it checkpointed, not draw a new one.

Run in process by the tests, or under ``accelerate launch`` (``python toy_updates.py OUT``),
where it writes ``OUT/result-<rank>.pt``.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from diffalign import stopping
from diffalign.errors import Stopped
from diffalign.steps.base import MicroBatch
from diffalign.training.update import UpdateLoop, UpdateSettings

ROWS, SPLIT, FEATURES, LR = 8, 3, 4, 1.0
STOP_IN = 3
"""The update a SIGTERM arrives in: its collection serves update 4 too, so a resume that drew a
new one would end elsewhere."""


class ToyStep:
    """Collect-then-update: ``updates()`` yields lists of :class:`MicroBatch`; state carried in
    :meth:`state_dict` (each process's collection differs, so not shared)."""

    shared_state = False

    def __init__(self, model, stop_in: int | None = None):
        self.model, self.stop_in = model, stop_in
        self.collection, self.used, self.collections = None, 0, []

    def updates(self, start: int):
        update = start
        while True:
            if self.collection is None or self.used == 2:
                self.collection, self.used = torch.randn(ROWS, FEATURES + 1), 0  # the global RNG: not redrawable
                self.collections.append(self.collection)
            self.used += 1
            update += 1
            rows = self.collection
            yield [MicroBatch(lambda rows=rows, update=update: self._loss(rows[:SPLIT], update), SPLIT),
                   MicroBatch(lambda rows=rows: self._loss(rows[SPLIT:]), ROWS - SPLIT)]

    def _loss(self, rows, stop_after: int | None = None):
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if stop_after is not None and stop_after == self.stop_in and rank == 0:
            signal.raise_signal(signal.SIGTERM)  # between this update's two micro-batches, on one process
        prediction = self.model(rows[:, :FEATURES]).squeeze(1)
        return SimpleNamespace(loss=(prediction - rows[:, FEATURES]).pow(2).mean(), metrics={})

    def state_dict(self) -> dict:
        return {} if self.collection is None else {"collection": self.collection, "used": torch.tensor(self.used)}

    def load_state_dict(self, state: dict) -> None:
        self.collection, self.used = state["collection"], int(state["used"])


def train(out: Path, max_updates: int, stop_in: int | None = None, resume: str | None = None) -> dict:
    """Train the toy to ``max_updates``; returns the weights before and after update 1, after
    the last update, and update 1's collections gathered from every process."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(FEATURES, 1, bias=False)
    torch.manual_seed(100 + accelerator.process_index)  # each process collects its own rows
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    step = ToyStep(model, stop_in)
    loop = UpdateLoop(accelerator, model, optimizer, scheduler, out / "checkpoints",
                      UpdateSettings(max_updates, checkpoint_every=0), lambda: model.parameters(), carried=step)
    loop.resume(resume)
    weight = lambda: accelerator.unwrap_model(model).weight.detach().clone()  # noqa: E731
    seen = {"w0": weight()}

    def after_update(update: int) -> None:
        if update == 1:
            seen["w1"] = weight()

    stopped = None
    with stopping.stop_requests():
        try:
            loop.run(step.updates(loop.update), after_update=after_update)
        except Stopped as err:
            stopped = err
    result = {**seen, "final": weight(), "update": loop.update, "stopped": stopped is not None}
    if stopped is None and resume is None:  # a stopped run has ended its process group
        result["first_collection"] = accelerator.gather(step.collections[0][None]).flatten(0, 1)
    return result


def expected_first_update(w0: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """SGD's first update from ``w0`` on the mean squared error of all ``rows`` as one batch."""
    w = w0.clone().requires_grad_(True)
    loss = (rows[:, :FEATURES] @ w[0] - rows[:, FEATURES]).pow(2).mean()
    loss.backward()
    return (w0 - LR * w.grad).detach()


RUNS = {"straight": dict(folder="straight"), "stopped": dict(folder="resumed", stop_in=STOP_IN),
        "resumed": dict(folder="resumed", resume="latest")}
"""An uninterrupted run, one stopped by SIGTERM in update :data:`STOP_IN`, and its resume."""


def run(out: Path, name: str, max_updates: int = 5) -> dict:
    options = dict(RUNS[name])
    return train(out / options.pop("folder"), max_updates, **options)


if __name__ == "__main__":  # runs in order; a stopped run ends its process group, so it comes last in a launch
    out = Path(sys.argv[1])
    rank = int(os.environ.get("RANK", "0"))  # a stopped run has no process group left to ask
    for name in sys.argv[2:]:
        torch.save(run(out, name), out / f"{name}-{rank}.pt")
    # The results are written; leave without the interpreter's teardown. Under torch 2.14 + gloo a
    # process of the resumed launch aborted there about one run in six ("terminate called without
    # an active exception", SIGABRT, after its results were saved, with or without
    # destroy_process_group first), which is not what this test checks.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
