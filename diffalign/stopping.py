"""Stopping long jobs cleanly on SIGTERM and SIGINT.

SLURM and Kubernetes send SIGTERM some time before they kill a job (SLURM's ``KillWait`` and
Kubernetes' ``terminationGracePeriodSeconds`` are 30 s by default), and Ctrl-C sends SIGINT.
Inside :func:`stop_requests` these signals only set a flag. The job checks :func:`requested` at a
point where its work is whole (after an optimiser step, after a shard), keeps what it has done
and raises :class:`~diffalign.errors.Stopped` (see :func:`stopped`). A second signal while the
first is pending acts as it would have without the handler, so pressing Ctrl-C twice still
stops at once.

Training, ``diffalign cache`` and every ``diffalign build`` run inside :func:`stop_requests`.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from diffalign.errors import Stopped

HANDLED = (signal.SIGTERM, signal.SIGINT)

_received: list[int] = []
_depth = 0


def _handler(signum, frame) -> None:
    if _received:  # the second signal: take the default action now
        signal.signal(signum, signal.SIG_DFL if signum != signal.SIGINT else signal.default_int_handler)
        signal.raise_signal(signum)
        return
    _received.append(signum)


@contextmanager
def stop_requests():
    """While inside, SIGTERM and SIGINT set the flag :func:`requested` reads instead of stopping
    the process. Nested uses share one flag; outside the main thread this does nothing (Python
    delivers signals to the main thread only)."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in HANDLED} if _depth == 0 else {}
    if _depth == 0:
        _received.clear()
        for s in HANDLED:
            signal.signal(s, _handler)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            for s, old in previous.items():
                signal.signal(s, old)
            _received.clear()


def requested() -> str | None:
    """The name of the first stop signal received inside :func:`stop_requests` (``"SIGTERM"`` or
    ``"SIGINT"``), or ``None``."""
    return signal.Signals(_received[0]).name if _received else None


def agreed() -> str | None:
    """:func:`requested` on any process, the same answer on every one. A collective: under
    ``torch.distributed`` every process must call it at the same point of the same loop."""
    number = _received[0] if _received else 0
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        import torch

        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([number], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        number = int(flag.item())
    return signal.Signals(number).name if number else None


def stopped(message: str, signal_name: str | None = None) -> Stopped:
    """The :class:`Stopped` to raise for the received signal (or ``signal_name``): the message says
    what was kept and how to continue."""
    name = signal_name or requested() or "SIGTERM"
    number = signal.Signals[name].value
    return Stopped(name, 128 + number, f"stopped by {name}: {message}")


def ignore_in_worker(worker_id: int | None = None) -> None:
    """``worker_init_fn`` of data-loader workers: they ignore the stop signals, which reach the
    whole process group, so that the main process, not a dead worker, decides where to stop.
    A worker still exits when the main process does (PyTorch's workers watch their parent)."""
    for s in HANDLED:
        signal.signal(s, signal.SIG_IGN)
