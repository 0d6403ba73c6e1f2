"""Reading a prompt set: the one reader shared by the dataset builders and evaluation.

A prompt set is one of

- a plain-text file (``.txt``): one prompt per line; blank lines are skipped;
- a JSON file (``.json``): a list of strings, a list of records (the prompt in ``column``), or an
  object holding such a list under ``"prompts"`` (or ``column``);
- a JSON-lines file (``.jsonl``): one string or one record per line;
- a CSV or TSV file (``.csv``, ``.tsv``): the column ``column``;
- a Parquet file (``.parquet``): the column ``column`` (only that column is read);
- anything else: a hub dataset id (or a local dataset folder) read with ``datasets``; the
  column ``column`` of split ``split``.

Without ``column`` a record's prompt is its first field among ``prompt``, ``text``, ``caption``
(``Prompt`` etc. too: names compare case-insensitively). Prompts are stripped of surrounding
whitespace; the order of the source is kept, duplicates too (``dedup=True`` drops repeats).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

from diffalign.errors import DiffalignError

PROMPT_COLUMNS = ("prompt", "text", "caption")
KINDS = ("auto", "txt", "json", "jsonl", "csv", "tsv", "parquet", "hub")


class PromptSourceError(DiffalignError, ValueError):
    """A prompt set that cannot be found or read; names the file and what was expected."""


def _kind_of(source: str) -> str:
    suffix = Path(source).suffix.lower().lstrip(".")
    if suffix in ("txt", "json", "jsonl", "csv", "tsv", "parquet"):
        return suffix
    return "hub"


def _pick(record, column: str | None, where: str) -> str:
    """The prompt of one record (a string, or a dict read through ``column``)."""
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        raise PromptSourceError(f"{where}: expected a string or an object per prompt, found {type(record).__name__}")
    names = {str(k).lower(): k for k in record}
    wanted = [column] if column else list(PROMPT_COLUMNS)
    for name in wanted:
        key = name if name in record else names.get(name.lower())
        if key is not None:
            value = record[key]
            if not isinstance(value, str):
                raise PromptSourceError(f"{where}: column {key!r} holds {type(value).__name__}, not text")
            return value
    raise PromptSourceError(f"{where}: no column {' / '.join(wanted)}; found {sorted(record)}. Pass column=")


def read_prompts(source: str | Path, column: str | None = None, kind: str = "auto", split: str = "train",
                 limit: int | None = None, dedup: bool = False) -> list[str]:
    """The prompts of ``source`` in order.

    Args:
        source: a ``.txt``/``.json``/``.jsonl``/``.csv``/``.tsv``/``.parquet`` file, or a hub
            dataset id or local dataset folder.
        column: the prompt field of records / CSV rows / dataset rows (default: the first of
            :data:`PROMPT_COLUMNS` present).
        kind: one of :data:`KINDS`; ``auto`` goes by the file suffix.
        split: hub datasets only.
        limit: keep the first ``limit`` prompts (after de-duplication).
        dedup: drop exact repeats (after stripping), keeping the first.

    Raises:
        PromptSourceError: missing file, unknown column, a non-text prompt, or no prompts at all.
    """
    source = str(source)
    kind = _kind_of(source) if kind == "auto" else kind
    if kind not in KINDS:
        raise PromptSourceError(f"unknown prompt-set kind {kind!r}; choose one of {', '.join(KINDS)}")
    path = Path(source).expanduser()
    if kind != "hub" and not path.is_file():
        raise PromptSourceError(f"{source}: no such prompt file")
    if kind == "txt":
        raw = path.read_text(encoding="utf-8").splitlines()
    elif kind == "json":
        value = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(value, dict):
            key = column if column in value else "prompts"
            if key not in value or not isinstance(value[key], list):
                raise PromptSourceError(f"{source}: a JSON object needs a list under 'prompts'; found keys {sorted(value)}")
            value = value[key]
        if not isinstance(value, list):
            raise PromptSourceError(f"{source}: expected a JSON list of prompts, found {type(value).__name__}")
        raw = [_pick(r, column, f"{source}[{i}]") for i, r in enumerate(value)]
    elif kind == "jsonl":
        raw = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                raw.append(_pick(json.loads(line), column, f"{source}:{number}"))
    elif kind in ("csv", "tsv"):
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if kind == "tsv" else ",")
            raw = [_pick(row, column, f"{source}:{number}") for number, row in enumerate(reader, start=2)]
    elif kind == "parquet":
        raw = _parquet_prompts(path, column)
    else:
        raw = _hub_prompts(source, column, split, limit if not dedup else None)
    prompts = _clean(raw, dedup)
    if limit is not None:
        prompts = prompts[:limit]
    if not prompts:
        raise PromptSourceError(f"{source}: holds no prompts")
    return prompts


def _parquet_prompts(path: Path, column: str | None) -> list[str]:
    """One column of a Parquet file, read alone (a table of images stays on disk): ``column``, or
    the first of :data:`PROMPT_COLUMNS` present (names compare case-insensitively)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except (pa.ArrowInvalid, OSError) as err:
        raise PromptSourceError(f"{path}: not a readable Parquet file ({err})") from None
    by_lower = {name.lower(): name for name in names}
    wanted = [column] if column else list(PROMPT_COLUMNS)
    found = next((name if name in names else by_lower.get(name.lower()) for name in wanted
                  if name in names or name.lower() in by_lower), None)
    if found is None:
        raise PromptSourceError(f"{path}: no column {' / '.join(wanted)}; found {names}. Pass column=")
    values = pq.read_table(path, columns=[found]).column(found).to_pylist()
    return [_pick({found: value}, found, f"{path} row {number}") for number, value in enumerate(values)]


def _clean(raw: Sequence[str], dedup: bool) -> list[str]:
    out, seen = [], set()
    for prompt in raw:
        prompt = prompt.strip()
        if not prompt or (dedup and prompt in seen):
            continue
        seen.add(prompt)
        out.append(prompt)
    return out


def _hub_prompts(name: str, column: str | None, split: str, limit: int | None) -> list[str]:
    """One column of a hub dataset (or local dataset folder), streamed so only ``limit`` rows are read."""
    import datasets

    try:
        stream = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as err:  # datasets raises many types; the message matters
        raise PromptSourceError(f"could not open dataset {name!r} (split {split!r}): {type(err).__name__}: {err}") from err
    out = []
    for number, row in enumerate(stream):
        if limit is not None and len(out) >= limit:
            break
        out.append(_pick(row, column, f"{name}[{number}]"))
    return out
