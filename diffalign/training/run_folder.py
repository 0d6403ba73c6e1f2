"""A run's output folder belongs to one run at a time, and a run never writes into another's.

- **One at a time.** A live run holds an exclusive ``flock`` on ``<output_dir>/.lock``. The
  kernel releases it when the process ends however it ends, SIGKILL included, so a killed run
  never leaves the folder stuck. Only the main process takes it; under ``accelerate launch`` the
  other processes write nothing there but their share of the checkpoints.
- **Never another run's folder.** A folder that already holds what a run writes is refused
  unless the config says ``resume`` (continue it) or ``overwrite`` (delete what the earlier run
  wrote and start again). ``resume=latest`` with no checkpoint to continue from is allowed for an
  interrupted run (it starts again from step 0), not for a finished one, whose weights it would
  silently train again.

:func:`check` runs before any model loads; :class:`RunLock` guards the run itself.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

from diffalign.errors import DiffalignError
from diffalign.training import checkpoint

LOCK = ".lock"
ARTEFACTS = ("config.yaml", "metrics.jsonl", "checkpoints", "logs", "validation", "lora", "final")
"""What a run writes in its output folder (also what ``overwrite`` deletes, and only that)."""
WEIGHTS = ("lora", "final")
"""What only a finished run has written."""


class RunFolderError(DiffalignError, ValueError):
    """An output folder in use by another run, or holding one; the message says how to proceed."""


def check(folder: str | Path, resume: str | None, overwrite: bool) -> None:
    """Refuse, before anything loads, a folder that is in use or holds another run.

    Raises:
        RunFolderError: naming the holder or what the folder holds, and the options that proceed.
    """
    folder = Path(folder)
    holder = lock_holder(folder)
    if holder is not None:
        raise RunFolderError(f"output_dir {folder} is in use by another run ({holder}); wait for it to end or "
                          "choose another output_dir")
    if resume is not None and overwrite:
        raise RunFolderError("resume and overwrite contradict each other: resume continues the run in output_dir, "
                          "overwrite deletes it")
    found = [name for name in ARTEFACTS if (folder / name).exists()]
    if not found or overwrite:
        return
    done = checkpoint.checkpoints(folder / "checkpoints")
    finished = any((folder / name).exists() for name in WEIGHTS)
    what = (f"a finished run (weights in {', '.join(str(folder / n) for n in WEIGHTS if (folder / n).exists())})"
            if finished else "an unfinished run")
    what += f", checkpoints up to step {int(done[-1].name.split('-')[-1])}" if done else ", no checkpoint"
    if resume is None:
        raise RunFolderError(f"output_dir {folder} already holds {what}. Pass resume=latest to continue it, "
                          "overwrite=true to delete it and start again, or choose another output_dir")
    if resume == "latest" and not done and finished:
        raise RunFolderError(f"output_dir {folder} holds {what}: resume=latest has nothing to continue from and would "
                          "train it again from step 0. Pass overwrite=true to do that, or choose another output_dir")


def clear(folder: str | Path) -> None:
    """Delete what an earlier run wrote in ``folder`` (:data:`ARTEFACTS`), nothing else."""
    for name in ARTEFACTS:
        path = Path(folder) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def lock_holder(folder: str | Path) -> str | None:
    """Who holds ``folder``'s lock (``"pid P on HOST since …"``), or ``None`` when nobody does."""
    path = Path(folder) / LOCK
    if not path.is_file():
        return None
    probe = RunLock(folder)
    if probe.acquire(write=False):
        probe.release()
        return None
    return path.read_text().strip() or "a process that has not written its name yet"


class RunLock:
    """The exclusive lock of a run folder; a context manager (``with RunLock(folder): ...``)."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK
        self._fd: int | None = None

    def acquire(self, write: bool = True) -> bool:
        """Take the lock without waiting; ``False`` when another process holds it."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        if write:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        if not self.acquire():
            raise RunFolderError(f"output_dir {self.path.parent} is in use by another run "
                              f"({self.path.read_text().strip()}); wait for it to end or choose another output_dir")
        return self

    def __exit__(self, *exc) -> None:
        self.release()

