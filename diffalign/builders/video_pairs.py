"""Human preference pairs of videos, Pick-a-Pic style → preference groups of two videos.

Each source row is one human comparison of two videos made for one prompt:

| column                     | meaning                                                                  |
|----------------------------|--------------------------------------------------------------------------|
| ``caption`` or ``prompt``  | the prompt (``caption`` is used when both are present)                   |
| ``video_0``, ``video_1``   | the videos: bytes of a video file, a ``{"bytes", "path"}`` struct, or a  |
|                            | path string (relative paths are relative to the source file's folder)    |
| ``label_0``, ``label_1``   | 1/0: that video was preferred; 0.5/0.5: a tie; missing: no label         |
| ``has_label`` (optional)   | false marks an unlabelled row                                            |
| ``are_different`` (opt.)   | false marks a pair of the same video                                     |
| ``model_0``, ``model_1``, ``video_0_uid``, ``video_1_uid``, ``ranking_id``, ``user_id``,            |
| ``best_video_uid``, ``created_at`` (optional): kept in ``meta``                                       |

Sources: local Parquet files, WebDataset tar shards (``<key>.json`` with the columns, the videos
as ``<key>.video_0`` / ``<key>.video_1`` or ``<key>.0.mp4`` / ``<key>.1.mp4``, the prompt
optionally as ``<key>.txt``), ``.jsonl`` files (one JSON object a line) or ``.csv`` tables (videos
as paths), or one hub dataset id; all are streamed, never loaded whole.

The rules are Pick-a-Pic's (:mod:`diffalign.builders.pick_a_pic`): unlabelled rows and pairs of the
same video are dropped, ties are dropped unless ``keep_ties`` (then kept with ranks ``[0, 0]``,
never flipped), each pair is written best first. Every video must decode (its first frame, with
PyAV); a row with one that does not, or whose file is missing, is dropped as
``unreadable_video`` (an error under ``strict``). The videos' bytes go into the ``images`` column
(the column every medium shares) and the manifest says ``"media": "video"``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Iterator, Sequence


from diffalign.builders.human_pairs import Media, add_pair_arguments, write_pairs
from diffalign.data.sources import SourceError, detect_kind, expand_files, iter_rows
from diffalign.data.videos import is_readable_video
from diffalign.data.writer import ShardWriter

BUILDER = "video-pairs"
SOURCE_NAME = "video-pairs"
PROMPT_COLUMNS = ("caption", "prompt")
REQUIRED_COLUMNS = ("video_0", "video_1", "label_0", "label_1")
META_COLUMNS = ("ranking_id", "user_id", "best_video_uid", "created_at")
READ_COLUMNS = PROMPT_COLUMNS + REQUIRED_COLUMNS + META_COLUMNS + (
    "has_label", "are_different", "video_0_uid", "video_1_uid", "model_0", "model_1",
)
KINDS = ("auto", "parquet", "wds", "hub", "jsonl", "csv")
_TABLE_SUFFIXES = {".jsonl": "jsonl", ".csv": "csv"}


# ----------------------------------------------------------------------------------- one row
def convert(raw: dict, index: int, keep_ties: bool = False) -> tuple[dict | None, str | None]:
    """One source row → ``(group row, None)`` or ``(None, reason it was dropped)``.

    Video paths are read here (relative to ``raw["_source_dir"]``); a missing file gives bytes
    ``None``. Whether the videos decode is checked by :func:`build_video_pairs`.
    """
    _check_columns(raw)
    labels = _number(raw["label_0"], "label_0", raw), _number(raw["label_1"], "label_1", raw)
    if _flag(raw.get("has_label")) is False or None in labels:
        return None, "unlabelled"
    if _flag(raw.get("are_different")) is False:
        return None, "not_different"
    tie = labels[0] == labels[1]
    if tie and not keep_ties:
        return None, "tie"
    prompt = _prompt(raw)
    if not isinstance(prompt, str) or not prompt.strip():
        return None, "empty_prompt"
    order = (0, 1) if labels[0] >= labels[1] else (1, 0)  # a tie keeps the source's order
    videos = [_video_bytes(raw[f"video_{i}"], raw.get("_source_dir")) for i in order]
    row = {
        "id": f"{index:010d}",
        "prompt": prompt,
        "images": [{"bytes": data, "path": None} for data, _ in videos],
        "scores": None,
        "ranks": [0, 0] if tie else [0, 1],
        "captions": None,
        "source": SOURCE_NAME,
        "meta": json.dumps(_meta(raw, labels, order, tie, [path for _, path in videos]), default=str),
    }
    return row, None


def _check_columns(raw: dict) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in raw]
    if not any(c in raw for c in PROMPT_COLUMNS):
        missing.insert(0, " or ".join(PROMPT_COLUMNS))
    if missing:
        where = raw.get("_source_file", "the source")
        found = sorted(k for k in raw if not k.startswith("_"))
        raise SourceError(f"{where} lacks the video-pair column(s) {missing}; found {found}. See "
                          "`diffalign build video-pairs --help` for the columns a source needs")


def _prompt(raw: dict):
    """The first of :data:`PROMPT_COLUMNS` that has a value."""
    for column in PROMPT_COLUMNS:
        if raw.get(column) is not None:
            return raw[column]
    return None


def _number(value, column: str, raw: dict) -> float | None:
    """A label as a float; ``None`` for a missing one (CSV cells are strings, empty when missing)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise SourceError(f"{raw.get('_source_file', 'the source')}: {column} is {value!r}; labels are numbers "
                          "(1/0 for a preference, 0.5/0.5 for a tie) or empty") from err


def _flag(value) -> bool | None:
    """``has_label`` / ``are_different`` as a bool, from a bool, a number or CSV text; ``None`` if absent."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "1.0", "yes"):
        return True
    if text in ("false", "0", "0.0", "no"):
        return False
    return None


def _video_bytes(cell, folder) -> tuple[bytes | None, str | None]:
    """``(bytes or None when the file is missing, the path the video came from or None)``."""
    path = None
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return bytes(cell["bytes"]), None
        path = cell.get("path")
    elif isinstance(cell, (bytes, bytearray, memoryview)):
        return bytes(cell), None
    elif isinstance(cell, str):
        path = cell
    if not path:
        return None, None
    full = Path(path).expanduser()
    if not full.is_absolute():
        if folder is None:
            return None, path  # e.g. a hub dataset: no folder to look in
        full = Path(folder) / full
    return (full.read_bytes() if full.is_file() else None), path


def _meta(raw: dict, labels, order, tie: bool, paths: list) -> dict:
    meta = {k: raw[k] for k in META_COLUMNS if raw.get(k) is not None}
    meta["labels"] = [labels[i] for i in order]
    meta["tie"] = tie
    for name, column in (("models", "model_{}"), ("video_uids", "video_{}_uid")):
        if all(raw.get(column.format(i)) is not None for i in order):
            meta[name] = [raw[column.format(i)] for i in order]
    if any(paths):
        meta["video_paths"] = paths  # where the stored bytes were read from, best first
    return meta


# ----------------------------------------------------------------------------------- sources
def detect_source_kind(sources: Sequence[str]) -> str:
    """``jsonl`` or ``csv`` for tables, else what :func:`diffalign.data.sources.detect_kind` says."""
    try:
        files = expand_files(sources, tuple(_TABLE_SUFFIXES) + (".parquet", ".tar"))
    except SourceError:
        files = []
    kinds = {_TABLE_SUFFIXES.get(f.suffix.lower(), "other") for f in files}
    if not files and not (len(sources) == 1 and not Path(sources[0]).expanduser().exists()):
        raise SourceError(f"found no .parquet, .tar, .jsonl or .csv files in {list(sources)}")
    if kinds and kinds != {"other"}:
        if len(kinds) > 1:
            raise SourceError(f"the sources mix kinds of file ({', '.join(sorted(kinds - {'other'}))} and others); "
                              "build from one kind at a time, or pass --kind")
        return kinds.pop()
    return detect_kind(sources)


def iter_source(sources: Sequence[str], kind: str = "auto", start: int = 0, split: str = "train") -> Iterator[dict]:
    """Source rows from row ``start`` on, each with ``_source_file`` and ``_source_dir`` (the folder
    relative video paths are read from, or ``None``)."""
    kind = detect_source_kind(sources) if kind == "auto" else kind
    if kind == "jsonl":
        return _iter_jsonl(expand_files(sources, (".jsonl",)), start)
    if kind == "csv":
        return _iter_csv(expand_files(sources, (".csv",)), start)
    if kind == "wds":  # <key>.0.mp4 / <key>.video_0 members are video_0 (sources' WebDataset aliases)
        tars = expand_files(sources, (".tar",))
        return _with_folders(iter_rows([str(t) for t in tars], kind, start, split), _folders_by_name(tars))
    if kind == "parquet":
        folders = _folders_by_name(expand_files(sources, (".parquet",)))
        return _with_folders(iter_rows(sources, kind, start, split, columns=READ_COLUMNS), folders)
    if kind == "hub":
        local = Path(sources[0]).expanduser() if len(sources) == 1 else None
        folders = {sources[0]: local} if local is not None and local.is_dir() else {}
        return _with_folders(iter_rows(sources, kind, start, split), folders)
    raise SourceError(f"unknown source kind {kind!r}; choose one of {', '.join(KINDS)}")


def _folders_by_name(files: Sequence[Path]) -> dict:
    """File name → its folder (``iter_rows`` names a row's file without its folder); a name found
    in two folders maps to ``None``, so its relative paths are refused rather than guessed."""
    folders: dict = {}
    for path in files:
        folders[path.name] = None if path.name in folders and folders[path.name] != path.parent else path.parent
    return folders


def _with_folders(rows: Iterator[dict], folders: dict) -> Iterator[dict]:
    for row in rows:
        row["_source_dir"] = folders.get(row.get("_source_file"))
        yield row


def _iter_jsonl(files: Sequence[Path], start: int) -> Iterator[dict]:
    """Rows of JSON-lines files; blank lines are not rows."""
    if not files:
        raise SourceError("no .jsonl files to read")
    index = 0
    for path in files:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                if index >= start:
                    yield {**_json_object(line, f"{path}:{number}"), "_source_file": path.name, "_source_dir": path.parent}
                index += 1


def _json_object(line: str, where: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise SourceError(f"{where} is not JSON ({err}); each line must be one JSON object") from err
    if not isinstance(row, dict):
        raise SourceError(f"{where} is a JSON {type(row).__name__}; each line must be one JSON object")
    return row


def _iter_csv(files: Sequence[Path], start: int) -> Iterator[dict]:
    """Rows of CSV tables with a header line; empty cells read as ``None``."""
    if not files:
        raise SourceError("no .csv files to read")
    index = 0
    for path in files:
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if index >= start:
                    cells = {k: (v if v != "" else None) for k, v in row.items() if k is not None}
                    yield {**cells, "_source_file": path.name, "_source_dir": path.parent}
                index += 1


# ----------------------------------------------------------------------------------- build
def build_video_pairs(
    sources: Sequence[str],
    out: str | Path,
    *,
    kind: str = "auto",
    split: str = "train",
    keep_ties: bool = False,
    dedup_prompts: bool = False,
    limit: int | None = None,
    shard_size: int = 1000,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Build (or resume building) a video preference dataset from human video pairs.

    Args:
        sources: Parquet, ``.jsonl`` or ``.csv`` files/folders/globs, WebDataset tars, or one hub id.
        out: the dataset folder to write.
        kind: one of :data:`KINDS`; ``auto`` goes by the file names.
        split: hub datasets only.
        keep_ties: keep tied rows as groups with ranks ``[0, 0]``.
        dedup_prompts: keep only the first row of each prompt (case and spacing ignored).
        limit: stop after this many kept rows.
        shard_size: rows per Parquet shard (the unit of resumption).
        strict: an unreadable or missing video stops the build instead of dropping the row.
        overwrite: discard whatever ``out`` holds.

    Returns:
        The manifest (also written to ``out/manifest.json``), with ``"media": "video"``.
    """
    options = dict(
        sources=[str(s) for s in sources], kind=kind, split=split, keep_ties=keep_ties,
        dedup_prompts=dedup_prompts, limit=limit, shard_size=shard_size, strict=strict,
    )
    writer = ShardWriter(out, builder=BUILDER, options=options, shard_size=shard_size, overwrite=overwrite,
                         inputs={"sources": list(sources)})
    if writer.complete:
        return writer.finish()
    rows = iter_source(sources, kind, start=writer.position, split=split)
    stopped = write_pairs(writer, rows, lambda raw, index: convert(raw, index, keep_ties),
                          Media(is_readable_video, "unreadable_video", _unreadable_message),
                          dedup_prompts=dedup_prompts, limit=limit, strict=strict, progress=progress, desc="video-pairs")
    return writer.finish({
        "group_size": 2, "media": "video", "reward_models": [],
        "stopped_at_limit": stopped,
    })


def _unreadable_message(row: dict, index: int, raw: dict) -> str:
    paths = json.loads(row["meta"]).get("video_paths") or [None, None]
    bad = [f"video {k} of the pair (best first){f', {paths[k]!r}' if paths[k] else ''}"
           for k, video in enumerate(row["images"]) if not is_readable_video(video["bytes"])]
    return (f"row {index} ({raw.get('_source_file', 'the source')}): {' and '.join(bad)} cannot be found or decoded "
            "(strict mode); fix the source, or build without --strict to drop such rows")


# ----------------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The builder's command-line options (shared by ``diffalign build video-pairs`` and
    ``datasets_builders/video_pairs.py``)."""
    parser.add_argument("sources", nargs="+", help="Parquet, .jsonl or .csv files or folders, WebDataset .tar shards, "
                        "glob patterns, or one hub dataset id; columns caption (or prompt), video_0, video_1, "
                        "label_0, label_1")
    add_pair_arguments(parser, KINDS, "video")


def run(args: argparse.Namespace) -> int:
    """Run the builder from parsed arguments; prints the manifest's counts."""
    manifest = build_video_pairs(
        args.sources, args.out, kind=args.kind, split=args.split, keep_ties=args.keep_ties,
        dedup_prompts=args.dedup_prompts, limit=args.limit, shard_size=args.shard_size,
        strict=args.strict, overwrite=args.overwrite, progress=not args.no_progress,
    )
    print(f"wrote {manifest['rows']} video pairs to {args.out}; counts: {json.dumps(manifest['counts'])}")
    return 0
