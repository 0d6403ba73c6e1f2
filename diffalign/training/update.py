"""One update loop for everything diffalign trains: micro-batches → gradients → one optimiser update.

An **update** is one optimiser step (``max_steps`` counts them; so do checkpoints, the learning
rate schedule and resume). Whoever trains hands the loop its updates, each a list of
:class:`~diffalign.steps.base.MicroBatch` closures; the loop runs them all the same way (:class:`Updater`):

1. every micro-batch's forward returns a loss (``None``: nothing readable in it);
2. backward of ``loss · size / Σ size`` (equal sizes: ``loss / count``, what accelerate's
   gradient accumulation does), with DDP's gradient all-reduce only on the last micro-batch;
3. one all-reduce per micro-batch agrees across processes on skipping (a ``None`` or non-finite
   loss anywhere) and on stopping (SIGTERM/SIGINT anywhere), so every process takes the same
   updates and stops after the same one;
4. clipping (whose norm must be finite), the optimiser and schedule steps.

:class:`UpdateLoop` repeats that to ``max_updates`` and owns what an update count decides:
checkpoints (with the state a producer carries from one update to the next, e.g. a collection
of samples), resume, and the stop that saves and exits. The preference trainer
(:mod:`diffalign.training.trainer`) groups ``gradient_accumulation_steps`` batches per update
(:meth:`diffalign.steps.base.PreferenceStep.updates`); a step may instead collect once and make
several updates over micro-batches of what it collected.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from diffalign import stopping
from diffalign.errors import DiffalignError
from diffalign.steps.base import MicroBatch
from diffalign.training import checkpoint


class TrainingError(DiffalignError, RuntimeError):
    """Training failed: too many skipped updates in a row, or every update skipped."""


@dataclass
class UpdateSettings:
    """What decides how an update is taken and when the loop checkpoints or gives up."""

    max_updates: int
    max_grad_norm: float = 0.0
    """Clip to this norm; 0 measures only (a non-finite norm still skips the update)."""
    max_nonfinite: int = 10
    checkpoint_every: int = 0
    keep_checkpoints: int = 2


def new_state() -> dict:
    """The loop's counters, checkpointed with every update (``step``: updates taken so far;
    ``batches``: data batches a producer has drawn, for resuming its data order)."""
    return {"step": 0, "batches": 0, "skipped_steps": 0, "skipped_groups": 0, "nonfinite_in_a_row": 0}


class Updater:
    """Takes one update from its micro-batches (the module docstring, points 1–4)."""

    def __init__(self, accelerator, model, optimizer, scheduler, clip_parameters, settings: UpdateSettings,
                 state: dict):
        self.accelerator, self.model, self.optimizer, self.scheduler = accelerator, model, optimizer, scheduler
        self.clip_parameters, self.settings, self.state = clip_parameters, settings, state
        self.stop = False

    def __call__(self, micro_batches: list[MicroBatch], on_metrics: Callable[[dict], None]) -> None:
        """Forward, backward and (unless skipped) the optimiser step of one update."""
        accelerator, bad = self.accelerator, False
        total = sum(m.size for m in micro_batches)
        deepspeed = _is_deepspeed(accelerator)
        if deepspeed and len(micro_batches) != accelerator.gradient_accumulation_steps:
            raise TrainingError(f"under DeepSpeed every update has gradient_accumulation_steps = "
                                f"{accelerator.gradient_accumulation_steps} micro-batches (its engine counts them); "
                                f"this one has {len(micro_batches)}")
        for i, micro in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            # Gradients are all-reduced on the last micro-batch only (accelerate's accumulate does the same).
            accelerator.gradient_state._set_sync_gradients(last)
            with contextlib.nullcontext() if last else accelerator.no_sync(self.model):
                out = micro.forward()
                if self._agree(out):
                    bad = True
                else:
                    # DeepSpeed's engine divides by its own accumulation count.
                    accelerator.backward(out.loss if deepspeed else out.loss / (total / micro.size))
                    on_metrics(out.metrics)
        self._optimizer_step(bad)

    def _agree(self, out) -> bool:
        """True on every process when any process has nothing to learn from or a non-finite loss,
        so that all of them skip together (a lone skip would hang distributed backward). The same
        all-reduce agrees on a stop request, so every process stops after the same update."""
        bad = 1.0 if out is None else float(not torch.isfinite(out.loss).all())
        flags = torch.tensor([bad, float(stopping.requested() is not None)], device=self.accelerator.device)
        bad, stop = self.accelerator.reduce(flags, reduction="sum").tolist()
        self.stop = self.stop or stop > 0
        return bad > 0

    def _optimizer_step(self, bad: bool) -> None:
        state = self.state
        if bad or not self._clip_gradients():
            self.optimizer.zero_grad(set_to_none=True)
            state["skipped_steps"] += 1
            state["nonfinite_in_a_row"] += 1
            if state["nonfinite_in_a_row"] >= self.settings.max_nonfinite:
                raise TrainingError(
                    f"{state['nonfinite_in_a_row']} updates in a row had a non-finite loss or gradient norm, or no "
                    "readable data; lower the learning rate or beta, or check the data"
                )
            return
        state["nonfinite_in_a_row"] = 0
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _clip_gradients(self) -> bool:
        """Clip to ``max_grad_norm`` (0: measure only, an infinite bound clips nothing) and say
        whether the norm is finite. The norm is the same on every process (gradients are
        all-reduced, or FSDP reduces the norm), so all of them skip together. Under DeepSpeed,
        which steps inside ``backward``, accelerate returns no norm and DeepSpeed's own overflow
        checks apply."""
        max_norm = self.settings.max_grad_norm
        norm = self.accelerator.clip_grad_norm_(self.clip_parameters(), max_norm if max_norm > 0 else math.inf)
        if norm is None:
            return True
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2 returns a DTensor
        return bool(torch.isfinite(norm))


def _is_deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


class UpdateLoop:
    """Updates until ``max_updates``, with checkpoints, resume and stop requests.

    Args:
        accelerator, model, optimizer, scheduler: as prepared by ``accelerator.prepare``.
        folder: where checkpoints go (``checkpoint-NNNNNNN``).
        clip_parameters: ``() -> parameters`` to clip (the trainable ones).
        carried: what the producer of the updates carries from one update to the next, with
            ``state_dict()``, ``load_state_dict(state)`` and ``shared_state`` (``True``: the same
            on every process, saved once); ``None`` when it carries nothing.
    """

    def __init__(self, accelerator, model, optimizer, scheduler, folder: Path, settings: UpdateSettings,
                 clip_parameters: Callable[[], Iterable], carried=None):
        self.accelerator, self.folder, self.settings, self.carried = accelerator, Path(folder), settings, carried
        self.state = new_state()
        self.updater = Updater(accelerator, model, optimizer, scheduler, clip_parameters, settings, self.state)

    @property
    def update(self) -> int:
        """Updates taken so far."""
        return self.state["step"]

    def resume(self, resume: str | None, say=print) -> Path | None:
        """Load the checkpoint ``resume`` names (``None``, ``"latest"`` or a folder) if any."""
        path = checkpoint.resolve_resume(resume, self.folder, say=say)
        if path is not None:
            self.load(path)
        return path

    def load(self, path: Path) -> None:
        """Restore weights, optimiser, schedule, RNG, the counters and the carried state of ``path``."""
        state, carried = checkpoint.load(self.accelerator, path)
        self.state.update(state)
        if self.carried is not None:
            self.carried.load_state_dict(carried)
        elif carried:
            raise checkpoint.CheckpointError(f"{path} holds state carried between updates, and this run keeps none")

    def run(self, updates: Iterator[list[MicroBatch]], *, on_metrics: Callable[[dict], None] = lambda m: None,
            after_update: Callable[[int], None] = lambda update: None,
            after_checkpoint: Callable[[int], None] = lambda update: None,
            before_stop: Callable[[int], None] = lambda update: None) -> None:
        """Take updates from ``updates`` until ``max_updates`` (or it runs dry).

        After update ``n``: ``after_update(n)`` (logging, the producer's own bookkeeping), its
        checkpoint when one is due, then ``after_checkpoint(n)`` (previews, evaluations: what
        must not change the checkpointed state). On a stop request, ``before_stop(n)`` runs, then
        the checkpoint of update ``n`` is written (unless it was just written) and
        :class:`~diffalign.errors.Stopped` is raised.
        """
        settings = self.settings
        for micro_batches in updates:
            if self.update >= settings.max_updates:
                break
            self.updater(micro_batches, on_metrics)
            self.state["step"] += 1
            update = self.update
            after_update(update)
            if self.checkpoint_due(update):
                self.save()
            after_checkpoint(update)
            if update >= settings.max_updates:
                break
            if self.updater.stop:
                before_stop(update)
                path = checkpoint.path_for(self.folder, update) if self.checkpoint_due(update) else self.save()
                self.accelerator.end_training()
                raise stopping.stopped(f"update {update} of {settings.max_updates} is saved in {path}; run the same "
                                       "command with resume=latest to continue from there")

    def checkpoint_due(self, update: int) -> bool:
        every = self.settings.checkpoint_every
        return bool(every) and update % every == 0

    def save(self) -> Path:
        carried = self.carried
        return checkpoint.save(self.accelerator, self.folder, self.update, dict(self.state),
                               self.settings.keep_checkpoints,
                               step_state=None if carried is None else carried.state_dict(),
                               shared=True if carried is None else carried.shared_state)


__all__ = ["MicroBatch", "TrainingError", "UpdateLoop", "UpdateSettings", "Updater", "new_state"]
