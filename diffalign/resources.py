"""What the machine has, asked before work starts: free disk where a command writes, free memory
where it computes. A size option a machine cannot hold is refused by name before any model loads
(:func:`require_memory`), the way the latent cache checks its disk (:func:`require_disk`)."""

from __future__ import annotations

import shutil
import weakref
from pathlib import Path

from diffalign.errors import DiffalignError


class ResourceError(DiffalignError, ValueError):
    """Too little disk or memory for what was asked; the message names the option to change."""


def free_disk(folder: str | Path) -> int:
    """Free bytes on the disk that holds ``folder`` (its nearest existing parent)."""
    folder = Path(folder).expanduser().absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def disk_full(folder: str | Path, margin: int = 1 << 20) -> bool:
    """Whether the disk of ``folder`` has less than ``margin`` bytes free: what a failed write is
    taken to mean when the library that wrote gave no reason (``torch.save`` says only "unexpected
    pos")."""
    return free_disk(folder) < margin


def free_memory(device: str | None = None) -> int:
    """Free bytes of the memory a command computes in: the GPU's (``cuda``, or ``None`` when one
    is present), else the machine's available RAM."""
    import torch

    if (device is None or str(device).startswith("cuda")) and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info()[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # psutil comes with accelerate; this is for a bare install
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def collect_if_kept(*gone: weakref.ref) -> None:
    """Run the cycle collector only if an object the caller let go of is still alive.

    ``gone``: weak references to what the caller just dropped (a model, a pipeline's text
    encoders). Reference counting frees such a model at once unless a reference cycle holds it; a
    full ``gc.collect()`` is then needed to give its memory back, but costs 0.3–0.4 s in a process
    with many live objects (measured on the tiny families, whose encoders refcounting always
    freed), which a short run or a test pays every time."""
    if any(ref() is not None for ref in gone):
        import gc

        gc.collect()


def require_disk(need: int, folder: str | Path, what: str, fix: str) -> None:
    """Refuse to start ``what`` (which writes at least ``need`` bytes under ``folder``) on a disk
    with less free space."""
    free = free_disk(folder)
    if need > free:
        raise ResourceError(f"{what} needs at least {size(need)} in {folder}, but only {size(free)} are free there; "
                            f"{fix}")


def require_memory(need: int, what: str, fix: str, device: str | None = None) -> None:
    """Refuse ``what``, whose tensors alone take ``need`` bytes, where that much memory is not free
    (a lower bound: the model's activations come on top)."""
    free = free_memory(device)
    if need > free:
        raise ResourceError(f"{what} needs at least {size(need)} of memory for its tensors alone, and {size(free)} "
                            f"are free; {fix}")


def size(n: int) -> str:
    """``n`` bytes for a message: ``"512 B"``, ``"63.2 KiB"``, ``"1.5 GiB"``."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def pixel_bytes(images: int, height: int, width: int, frames: int | None = None) -> int:
    """Bytes of ``images`` float32 RGB images (or clips of ``frames`` frames) at ``height × width``:
    what a batch holds once decoded, before any model runs on it."""
    return images * 3 * height * width * (frames or 1) * 4
