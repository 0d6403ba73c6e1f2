"""Output folders: where a command may write, and what it may delete.

One rule for every command that writes (each ``diffalign build``, ``cache``, ``score --into`` and
``--out``, ``make-tiny``, ``train``, ``evaluate``):

1. It writes only inside its own output folder (``cache``'s is ``DATA/cache/<model>-<size>``, the
   place the dataset format keeps for it; no reader of the dataset looks there).
2. It refuses an output folder that is, contains or lies inside any of its inputs
   (:func:`check_apart`): a build never writes over its sources, nor a run over its model.
3. It writes into a new or empty folder, or into one holding its own earlier output, as its own
   record marks it: a dataset's ``manifest.json`` or progress file, a run's ``config.yaml``, an
   evaluation's ``generation.json``, a cache's ``cache.json``, ``.make-tiny.json``. Any other
   folder is refused (:func:`refuse_unless_empty`), so nothing it writes replaces a file it did
   not write.
4. ``--overwrite`` (``overwrite=true`` for ``train``) removes only what the same command wrote
   there before, as that record names it (a dataset's shards, card and records; a run's
   checkpoints, logs, weights and images); a file it did not write stays.

The record of each kind of folder lives with the code that writes it
(:mod:`diffalign.data.writer`, :mod:`diffalign.training.run_folder`); this module holds the rule's
shared parts, and the lock that keeps two runs out of one folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path
from typing import Iterable, Mapping

from diffalign.errors import DiffalignError


class OutputError(DiffalignError, ValueError):
    """An output folder the command must not write into, or not now; the message says which to use."""


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or inner.is_relative_to(outer)


def check_apart(out: str | Path, inputs: Mapping[str, str | Path | Iterable[str | Path] | None], option: str) -> None:
    """Refuse an output ``out`` that is, contains or lies inside one of the ``inputs``.

    Args:
        out: the output folder (or file).
        inputs: ``{option naming it: path or paths}``; ``None``, and names that are not local
            paths (hub ids), are passed over.
        option: how the command names ``out`` (``--out``, ``output_dir``), for the message.

    Raises:
        OutputError: naming both and the fix.
    """
    target = Path(out).expanduser().resolve()
    for name, value in inputs.items():
        values = value if isinstance(value, (list, tuple, set)) else [value]
        for item in values:
            if item is None or not Path(item).expanduser().exists():
                continue
            source = Path(item).expanduser().resolve()
            if target == source:
                how = "is"
            elif _inside(target, source):
                how = "lies inside"
            elif _inside(source, target):
                how = "contains"
            else:
                continue
            raise OutputError(f"{option} {out} {how} the input {name} {item}: a command never writes where it reads; "
                              f"choose an {option} outside it")


def refuse_unless_empty(folder: Path, option: str, what: str) -> None:
    """Refuse ``folder`` when it holds anything (a lock file aside): for a command whose own record
    is not there, a non-empty folder is someone else's.

    Args:
        option: how the command names the folder (``--out``, ``output_dir``).
        what: what the command writes and would find there (``a dataset of this command``).

    Raises:
        OutputError: listing what is there.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{option} {folder} is a file; give a folder")
    present = sorted(p.name for p in folder.iterdir() if p.name != FolderLock.NAME) if folder.is_dir() else []
    if present:
        shown = ", ".join(present[:4]) + (", ..." if len(present) > 4 else "")
        raise OutputError(f"{option} {folder} is not empty ({shown}) and holds no {what}; a command never writes "
                          "among files it did not write: choose a new or empty folder")


def remove(folder: Path, names: Iterable[str]) -> None:
    """Delete ``names`` (files or folders, relative to ``folder``: what the command's record says it
    wrote), then the folders among their parents left empty; nothing else."""
    folder = Path(folder)
    parents = set()
    for name in names:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        parents.update(p for p in path.parents if _inside(p, folder) and p != folder)
    for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


class FolderLock:
    """The exclusive lock of an output folder (``<folder>/.lock``): a context manager.

    A live command holds an ``flock`` on it, which the kernel releases when the process ends
    however it ends (SIGKILL included), so a killed command never leaves the folder stuck. The
    file names its holder for the next one's message.

    Args:
        folder: the output folder.
        what: how messages name the folder (``output_dir``, ``the latent cache``).
        user: what holds it (``run``, ``command``).
    """

    NAME = ".lock"

    def __init__(self, folder: str | Path, what: str = "the folder", user: str = "command"):
        self.path = Path(folder) / self.NAME
        self.what, self.user = what, user
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

    def holder(self) -> str | None:
        """Who holds the lock (``"pid P on HOST since …"``), or ``None`` when nobody does."""
        if not self.path.is_file():
            return None
        probe = FolderLock(self.path.parent)
        if probe.acquire(write=False):
            probe.release()
            return None
        return self.path.read_text().strip() or "a process that has not written its name yet"

    def __enter__(self) -> FolderLock:
        if not self.acquire():
            raise OutputError(f"{self.what} {self.path.parent} is in use by another {self.user} "
                              f"({self.path.read_text().strip()}); wait for it to end")
        return self

    def __exit__(self, *exc) -> None:
        self.release()
