"""Streaming readers of raw sources, row by row, from any position.

Builders read through these so that a source of hundreds of GB is never held in memory or
copied: Parquet files are read a record batch at a time, WebDataset tars a member at a time,
hub datasets with ``streaming=True``. Every reader yields plain ``dict`` rows in a fixed order
and can start at row ``start``, which is how an interrupted build resumes.
"""

from __future__ import annotations

import glob
import json
import tarfile
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow.parquet as pq

from diffalign.errors import DiffalignError

KINDS = ("auto", "parquet", "wds", "hub")


class SourceError(DiffalignError, ValueError):
    """A source that cannot be found or read."""


def expand_files(sources: Sequence[str], suffixes: tuple[str, ...]) -> list[Path]:
    """Files named directly, found under folders (recursively), or matched by glob patterns,
    sorted so the row order is the same on every run."""
    files: list[Path] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            files += [p for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes)]
        elif path.is_file():
            files.append(path)
        else:
            matched = [Path(p) for p in glob.glob(str(path), recursive=True)]
            if not matched:
                raise SourceError(f"{source}: no such file or folder")
            files += [p for p in matched if p.is_file()]
    return sorted(set(files))


def detect_kind(sources: Sequence[str]) -> str:
    """``parquet`` or ``wds`` from the files given, else ``hub`` for a name like ``org/dataset``."""
    try:
        files = expand_files(sources, (".parquet", ".tar"))
    except SourceError:
        files = []
    if files:
        kinds = {"wds" if f.name.endswith(".tar") else "parquet" for f in files}
        if len(kinds) > 1:
            raise SourceError("the sources mix Parquet and tar files; build from one kind at a time")
        return kinds.pop()
    if len(sources) == 1 and not Path(sources[0]).expanduser().exists():
        return "hub"
    raise SourceError(f"found no .parquet or .tar files in {list(sources)}")


def iter_rows(sources: Sequence[str], kind: str = "auto", start: int = 0, split: str = "train",
              columns: Sequence[str] | None = None) -> Iterator[dict]:
    """Rows of ``sources`` from row ``start`` on.

    Args:
        sources: files, folders or glob patterns (Parquet, WebDataset tars), or one hub id.
        kind: one of :data:`KINDS`.
        split: hub datasets only.
        columns: Parquet only: read just these columns (the rest never leaves the disk).
    """
    kind = detect_kind(sources) if kind == "auto" else kind
    if kind == "parquet":
        return iter_parquet(expand_files(sources, (".parquet",)), start, columns)
    if kind == "wds":
        return iter_webdataset(expand_files(sources, (".tar",)), start)
    if kind == "hub":
        if len(sources) != 1:
            raise SourceError("give exactly one hub dataset id")
        return iter_hub(sources[0], split, start)
    raise SourceError(f"unknown source kind {kind!r}; choose one of {', '.join(KINDS)}")


def iter_parquet(files: Sequence[Path], start: int = 0, columns: Sequence[str] | None = None,
                 batch_size: int = 64) -> Iterator[dict]:
    """Rows of Parquet files in order; whole files before ``start`` are skipped by their footer."""
    if not files:
        raise SourceError("no Parquet files to read")
    skip = start
    for path in files:
        handle = open_parquet(path)
        if skip >= handle.metadata.num_rows:
            skip -= handle.metadata.num_rows
            continue
        present = [c for c in columns if c in handle.schema_arrow.names] if columns else None
        for batch in handle.iter_batches(batch_size=batch_size, columns=present):
            if skip >= batch.num_rows:
                skip -= batch.num_rows
                continue
            rows = batch.slice(skip).to_pylist()
            skip = 0
            for row in rows:
                row["_source_file"] = path.name
                yield row


def open_parquet(path: Path) -> pq.ParquetFile:
    """``pq.ParquetFile(path)``, or a :class:`SourceError` naming the file when it is not Parquet
    (a stray download, a truncated copy) instead of pyarrow's ``ArrowInvalid``."""
    import pyarrow as pa

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise SourceError(f"{path} is not a readable Parquet file ({err}); remove it from the sources, or "
                          "download it again") from err


# Image members of a WebDataset sample, by the names re-uploads use, mapped to Pick-a-Pic's.
_VIDEO_MEMBERS = {f"{i}.{suffix}": f"video_{i}" for i in (0, 1) for suffix in ("mp4", "webm", "mkv", "mov", "avi")}
_WDS_ALIASES = {"0.jpg": "jpg_0", "1.jpg": "jpg_1", "jpg0": "jpg_0", "jpg1": "jpg_1", "txt": "caption",
                **_VIDEO_MEMBERS}
_WDS_BINARY = {"jpg_0", "jpg_1", "jpg", "png", "webp", "jpeg", "video_0", "video_1", "mp4"}


def iter_webdataset(files: Sequence[Path], start: int = 0) -> Iterator[dict]:
    """Samples of WebDataset tar shards: members ``<key>.<field>`` grouped by key.

    ``<key>.json`` supplies columns as a JSON object; other fields are bytes (images) or text,
    parsed as JSON where they parse (so ``label_0`` written as ``1.0`` reads as a number).
    """
    if not files:
        raise SourceError("no tar files to read")
    index = 0
    for path in files:
        for sample in _tar_samples(path):
            if index >= start:
                sample["_source_file"] = path.name
                yield sample
            index += 1


def _tar_samples(path: Path) -> Iterator[dict]:
    key, sample = None, {}
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            folder, _, base = member.name.rpartition("/")
            stem, dot, field = base.partition(".")
            if not dot:
                continue
            member_key = f"{folder}/{stem}" if folder else stem
            if member_key != key:
                if sample:
                    yield sample
                key, sample = member_key, {"__key__": member_key}
            payload = tar.extractfile(member).read()
            field = _WDS_ALIASES.get(field, field)
            if field == "json":
                sample.update(json.loads(payload))
            elif field in _WDS_BINARY:
                sample[field] = payload
            else:
                text = payload.decode("utf-8")
                try:
                    sample[field] = json.loads(text)
                except json.JSONDecodeError:
                    sample[field] = text
    if sample:
        yield sample


def iter_hub(name: str, split: str = "train", start: int = 0) -> Iterator[dict]:
    """Rows of a hub dataset (or a local dataset folder) with ``datasets`` streaming."""
    import datasets

    try:
        stream = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as err:  # datasets raises many types; the message matters
        raise SourceError(f"could not open dataset {name!r} (split {split!r}): {type(err).__name__}: {err}") from err
    if hasattr(stream, "decode"):
        stream = stream.decode(False)  # keep image bytes; builders decode only to check them
    if start:
        stream = stream.skip(start)
    for row in stream:
        row["_source_file"] = name
        yield row
