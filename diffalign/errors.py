"""The project's error base class, and what a stop on SIGTERM or SIGINT raises.

Every error diffalign raises for bad input (a config, a dataset, a path, an option) derives from
:class:`DiffalignError` and says in its message how to fix it. The ``diffalign`` command prints
such an error as one ``error: …`` line and exits with status 1; a traceback means a bug.

Each subclass also derives from the built-in exception it used to be (``ValueError``,
``OSError``, ...), so code that catches those keeps working.
"""

from __future__ import annotations


class DiffalignError(Exception):
    """Bad input: the message names the fix. The command line prints it without a traceback."""


class Stopped(Exception):
    """A long job stopped cleanly on SIGTERM or SIGINT, after keeping what it had done.

    Not a :class:`DiffalignError`: nothing was wrong with the input. The command line prints
    :attr:`message` and exits with ``128 + signal number``, as a shell does for a killed process.

    Attributes:
        signal_name: ``"SIGTERM"`` or ``"SIGINT"``.
        exit_code: 143 for SIGTERM, 130 for SIGINT.
        message: what was kept and the command that continues the job.
    """

    def __init__(self, signal_name: str, exit_code: int, message: str):
        super().__init__(message)
        self.signal_name = signal_name
        self.exit_code = exit_code
        self.message = message


def describe(err: BaseException) -> str | None:
    """The one-line message for an error the user caused that is not a :class:`DiffalignError`
    (a full disk, a file that unpickles code, a corrupt safetensors file, too little memory), or
    ``None`` for anything else, which is a bug and keeps its traceback. The ``diffalign`` command
    prints the message instead of a traceback (``--debug`` shows the traceback too).

    The libraries wrap these in their own errors (diffusers turns a refused pickle into "Unable to
    load weights from checkpoint file ..."), so the chain of causes is searched, and the outer
    message, which names the file, is kept."""
    chain, seen = [], err
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for inner in chain:
        message = _describe_one(inner)
        if message:
            outer = _first_line(err)
            return message if inner is err or outer in message else f"{message} ({outer})"
    return None


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:300]


def _describe_one(err: BaseException) -> str | None:
    import errno
    import pickle

    code = err.errno if isinstance(err, OSError) else None
    if code is None and ("No space left on device" in str(err) or "os error 28" in str(err)):
        code = errno.ENOSPC  # safetensors and others wrap the OSError in their own error type
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        what = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
                errno.EFBIG: "a file grew past the size this system allows"}[code]
        name = getattr(err, "filename", None)
        where = f" while writing {name}" if name else ""
        return (f"{what}{where}. Nothing finished before was lost: free space (or choose a folder on a larger "
                "disk) and run the same command again to continue (training: with resume=latest)")
    if isinstance(err, PermissionError):
        return f"permission denied: {err.filename or err}; choose a path you may write to or read"
    if isinstance(err, pickle.UnpicklingError) and "weights_only" in str(err):
        return ("a weights file holds pickled Python objects, which diffalign never loads (torch.load with "
                "weights_only=True refused it); convert it to safetensors, or use a file that holds tensors only")
    if type(err).__name__ == "SafetensorError":
        return f"a .safetensors file is corrupt or truncated ({_first_line(err)}); re-download or re-create it"
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        first = _first_line(err) if str(err).strip() else ""
        return (f"out of memory{': ' + first[:200] if first else ''}; lower the batch size or the resolution "
                "(or, for training, turn on gradient_checkpointing)")
    return None
