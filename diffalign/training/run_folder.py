"""A run's output folder belongs to one run at a time, and a run never writes into another's.

- **One at a time.** A live run holds the folder's lock (:class:`~diffalign.outputs.FolderLock`,
  ``<output_dir>/.lock``), released when the process ends however it ends. Only the main process
  takes it; under ``accelerate launch`` the other processes write nothing there but their share
  of the checkpoints.
- **Never another run's folder.** A folder that already holds a run is refused unless the
  config says ``resume`` (continue it) or ``overwrite`` (delete what the earlier run wrote and
  start again). ``resume=latest`` with no checkpoint to continue from is allowed for an
  interrupted run (it starts again from step 0), not for a finished one, whose weights it would
  silently train again.
- **Only its own files.** A run's record is its ``config.yaml`` (the first thing it writes). A
  folder without it must be new or empty (with ``overwrite`` too), and ``overwrite`` deletes
  only what a run writes (:func:`own`): the rule of :mod:`diffalign.outputs`.

:func:`check` runs before any model loads; :func:`lock` guards the run itself.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from diffalign.outputs import FolderLock, OutputError, refuse_unless_empty, remove
from diffalign.training import checkpoint

LOCK = FolderLock.NAME
RECORD = "config.yaml"
ARTEFACTS = (RECORD, "metrics.jsonl", "checkpoints", "logs", "validation", "lora", "final")
"""The names a run writes at the top of its output folder."""
WEIGHTS = ("lora", "final")
"""What only a finished run has written."""
# Inside those folders, what a run writes (anything else there is not the run's).
_OWN_PATTERNS = ("metrics.jsonl", ".metrics.jsonl.tmp", "checkpoints/checkpoint-*", "checkpoints/.tmp-checkpoint-*",
                 "logs/**/events.out.tfevents.*", "validation/step-*.png", "validation/rollouts-step-*.png",
                 "lora/pytorch_lora_weights*.safetensors", "final/*/config.json",
                 "final/*/diffusion_pytorch_model*")


class RunFolderError(OutputError):
    """An output folder in use by another run, or holding one; the message says how to proceed."""


def is_run(folder: str | Path) -> bool:
    """Whether ``folder`` holds a run's record: a ``config.yaml`` a run wrote (a training config)."""
    try:
        found = yaml.safe_load((Path(folder) / RECORD).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(found, dict) and {"model", "data", "objective"} <= set(found)


def own(folder: str | Path) -> list[str]:
    """What a run wrote in ``folder`` (relative paths), by its record; ``[]`` without one."""
    folder = Path(folder)
    if not is_run(folder):
        return []
    found = {str(p.relative_to(folder)) for pattern in _OWN_PATTERNS for p in folder.glob(pattern)}
    return sorted(found) + [RECORD]


def check(folder: str | Path, resume: str | None, overwrite: bool) -> None:
    """Refuse, before anything loads, a folder that is in use or holds another run.

    Raises:
        RunFolderError: naming the holder or what the folder holds, and the options that proceed.
    """
    folder = Path(folder)
    holder = lock(folder).holder()
    if holder is not None:
        raise RunFolderError(f"output_dir {folder} is in use by another run ({holder}); wait for it to end or "
                             "choose another output_dir")
    if resume is not None and overwrite:
        raise RunFolderError("resume and overwrite contradict each other: resume continues the run in output_dir, "
                             "overwrite deletes it")
    if not is_run(folder):
        try:
            refuse_unless_empty(folder, "output_dir", f"run (no run {RECORD})")
        except OutputError as err:
            raise RunFolderError(str(err)) from None
        return
    if overwrite:
        return
    done = checkpoint.checkpoints(folder / "checkpoints")
    finished = any((folder / name).exists() for name in WEIGHTS)
    what = (f"a finished run (weights in {', '.join(str(folder / n) for n in WEIGHTS if (folder / n).exists())})"
            if finished else "an unfinished run")
    what += f", checkpoints up to step {checkpoint.step_of(done[-1])}" if done else ", no checkpoint"
    if resume is None:
        raise RunFolderError(f"output_dir {folder} already holds {what}. Pass resume=latest to continue it, "
                             "overwrite=true to delete it and start again, or choose another output_dir")
    if resume == "latest" and not done and finished:
        raise RunFolderError(f"output_dir {folder} holds {what}: resume=latest has nothing to continue from and would "
                             "train it again from step 0. Pass overwrite=true to do that, or choose another output_dir")


def clear(folder: str | Path) -> None:
    """Delete what an earlier run wrote in ``folder`` (:func:`own`), nothing else."""
    remove(Path(folder), own(folder))


def lock(folder: str | Path) -> FolderLock:
    """The lock a live run holds on ``folder``."""
    return FolderLock(folder, what="output_dir", user="run")
