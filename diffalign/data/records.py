"""What a build wrote in its dataset folder, by the record it keeps there, and the output-folder
rule of :mod:`diffalign.outputs` applied to datasets.

A build's record is its ``.progress.json`` (written before its first shard) and, once finished,
its ``manifest.json``: they name the builder, the shards, and any extra outputs it declared
(a report, nested datasets). :func:`own_files` lists what that makes the build's; ``--overwrite``
(:func:`clear_build`) deletes exactly that. :func:`check_output` is what every builder checks of
its ``--out`` before it starts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from diffalign.data.schema import DATA_DIR, MANIFEST
from diffalign.errors import DiffalignError
from diffalign.outputs import check_apart, refuse_unless_empty, remove

PROGRESS = ".progress.json"
CARD = "README.md"
SHARD = re.compile(r"shard-\d{5}\.parquet")
TEMP = re.compile(r"\..+\.tmp")  # what atomic writes leave behind when killed (".shard-00003.parquet.tmp")


class BuildError(DiffalignError, RuntimeError):
    """A build that cannot start or continue; the message says what to do."""


def build_record(root: str | Path) -> dict | None:
    """The record a build keeps in ``root`` (its manifest once finished, its progress file before),
    or ``None`` where no build wrote."""
    root = Path(root)
    for name in (MANIFEST, PROGRESS):
        try:
            record = json.loads((root / name).read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as err:
            raise BuildError(f"{root / name} is unreadable ({type(err).__name__}); it is not a record this command "
                             "wrote: choose another folder") from err
        if isinstance(record, dict):
            return record
    return None


def record_builder(record: dict, builder: str) -> str | None:
    """The builder a record names. A progress file written before records named their builder is
    taken as ``builder``'s own (an interrupted build of this version's writer); a manifest without
    one was not written by a builder (a hand-made dataset)."""
    if "builder" in record:
        return record["builder"]
    return builder if "position" in record else None


def own_files(root: str | Path) -> list[str]:
    """What a build wrote in ``root`` by its record (relative paths): the shards it recorded, those
    a killed build renamed in but had not recorded yet, its temporary files, the card, the records
    themselves and the extra outputs it declared (a report, nested datasets, whose own records say
    what they hold); ``[]`` where no build wrote."""
    root = Path(root)
    record = build_record(root)
    if record is None:
        return []
    names = {MANIFEST, PROGRESS, CARD} | {s["file"] for s in record.get("shards", [])}
    names |= {p.name for p in root.iterdir() if TEMP.fullmatch(p.name)}
    if (root / DATA_DIR).is_dir():
        names |= {f"{DATA_DIR}/{p.name}" for p in (root / DATA_DIR).iterdir()
                  if SHARD.fullmatch(p.name) or TEMP.fullmatch(p.name)}
    for extra in record.get("outputs", []):
        names |= set(_own_under(root, extra))
    return sorted(n for n in names if (root / n).exists())


def _own_under(root: Path, name: str) -> list[str]:
    """A declared extra output: a file is the build's; a folder holds datasets (nested builds) whose
    records say what is theirs."""
    path = root / name
    if path.is_file():
        return [name]
    if not path.is_dir():
        return []
    if build_record(path) is not None:
        return [f"{name}/{n}" for n in own_files(path)]
    return [n for child in sorted(path.iterdir()) if child.is_dir() for n in _own_under(root, f"{name}/{child.name}")]


def check_output(out: str | Path, builder: str, inputs: dict, option: str = "--out") -> None:
    """Everything a build checks of its ``--out`` before it starts (:mod:`diffalign.outputs`): apart
    from its ``inputs`` (``{option: path or paths}``) and free of files another wrote
    (:func:`check_output_folder`). Builders that load models call it before they do."""
    check_apart(out, inputs, option)
    check_output_folder(out, builder, option)


def check_output_folder(root: str | Path, builder: str, option: str = "--out") -> None:
    """What :class:`ShardWriter` checks of its folder before it writes, for a builder to call before
    anything heavy loads: a dataset of another builder is refused (with ``overwrite`` too), and so
    is a folder without a build record that is not empty (with ``overwrite`` too: it deletes only
    what a build wrote, and a folder without a record holds nothing a build wrote).

    Raises:
        BuildError: naming what stands there and the fix.
    """
    root = Path(root)
    record = build_record(root) if root.is_dir() else None
    if record is not None:
        found = record_builder(record, builder)
        if found != builder:
            raise BuildError(f"{option} {root} already holds another dataset (built by `{found}`, not `{builder}`); "
                             "--overwrite replaces only what this command wrote: choose another folder, or delete "
                             "that dataset yourself")
        return
    refuse_unless_empty(root, option, "dataset of this command")


def clear_build(root: str | Path, builder: str) -> None:
    """``--overwrite``: delete what an earlier build of ``builder`` wrote in ``root`` (:func:`own_files`),
    nothing else; a dataset that another command built is refused, not deleted.

    Raises:
        BuildError: ``root`` holds the output of another builder.
    """
    root = Path(root)
    check_output_folder(root, builder)
    if root.is_dir():
        remove(root, own_files(root))

