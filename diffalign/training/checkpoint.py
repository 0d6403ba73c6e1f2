"""Training checkpoints: ``accelerate.save_state`` written atomically, the last N kept.

A checkpoint is complete once its folder is renamed from ``.tmp-checkpoint-N`` to
``checkpoint-N``; ``resume: latest`` only ever sees complete ones. Beside accelerate's files
(model, optimiser, scheduler, RNG states) it holds ``trainer_state.json`` (step, batches
consumed, counters). The data order depends only on (seed, epoch) and each group's noise only
on (seed, epoch, row), so a resumed run sees the same data and noise as an uninterrupted one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path


PREFIX = "checkpoint-"
STATE = "trainer_state.json"


def checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / STATE).exists()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def resolve_resume(resume: str | None, folder: Path) -> Path | None:
    """``None``, ``"latest"`` (``None`` when there is none yet) or an explicit folder."""
    if resume is None:
        return None
    if resume == "latest":
        found = checkpoints(folder)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE).exists():
        raise FileNotFoundError(f"resume: {resume} is not a complete checkpoint (no {STATE})")
    return path


def path_for(folder: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` is (once complete)."""
    return folder / f"{PREFIX}{step:07d}"


def save(accelerator, folder: Path, step: int, state: dict, keep: int) -> Path:
    """Save a checkpoint for ``step`` on every process; prune to the newest ``keep``."""
    final = path_for(folder, step)
    tmp = folder / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE).write_text(json.dumps(state, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in checkpoints(folder)[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load(accelerator, path: Path) -> dict:
    """Restore model, optimiser, scheduler and RNG states; returns the trainer state."""
    accelerator.load_state(str(path))
    return json.loads((path / STATE).read_text())
