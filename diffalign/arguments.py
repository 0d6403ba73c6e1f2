"""Checked numeric options for the ``diffalign`` command's ``argparse`` parsers.

Every number a command takes has a range, checked when its arguments are parsed, before anything
loads: ``argparse`` then prints ``error: argument --batch-size: expected an integer ≥ 1, got 0``
and exits with status 2. Sizes in pixels have an upper bound too (:data:`MAX_SIDE`), and the
commands check a batch of them against free memory before loading a model
(:mod:`diffalign.resources`). Configs check their keys the same way through
:func:`diffalign.typed_config.bounds`.
"""

from __future__ import annotations

import argparse
import math

MAX_SIDE = 16384
"""The largest image side any command accepts, in pixels: twice what any released text-to-image
model samples at natively; a larger value is a typo."""


def integer(minimum: int | None = None, maximum: int | None = None):
    """An ``argparse`` type: an integer in ``[minimum, maximum]``."""
    wanted = _wanted("an integer", minimum, maximum)

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its own messages
    return parse


def number(minimum: float | None = None, maximum: float | None = None, *, above: bool = False):
    """An ``argparse`` type: a finite number in ``[minimum, maximum]`` (``(minimum, maximum]`` with
    ``above``)."""
    wanted = _wanted("a number", minimum, maximum, above)

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        low_bad = minimum is not None and (value <= minimum if above else value < minimum)
        if not math.isfinite(value) or low_bad or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def _wanted(kind: str, minimum, maximum, above: bool = False) -> str:
    if minimum is not None and maximum is not None:
        return f"{kind} in {'(' if above else '['}{minimum:g}, {maximum:g}]"
    if minimum is not None:
        return f"{kind} {'>' if above else '≥'} {minimum:g}"
    if maximum is not None:
        return f"{kind} ≤ {maximum:g}"
    return f"a finite {kind.split()[-1]}" if kind == "a number" else kind


COUNT = integer(1)
"""How many of something (images, rows, steps, frames): at least 1."""
SEED = integer(0, 2**63 - 1)
"""A random seed: what ``torch.Generator.manual_seed`` takes."""
SIDE = integer(8, MAX_SIDE)
"""An image side in pixels."""
SCALE = number(0)
"""A guidance scale or a threshold: a finite number ≥ 0."""
