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
