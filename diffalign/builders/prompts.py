"""Prompt-only datasets (``K = 0``) for online RL, which samples its own images: ``diffalign build
prompts``. Each row is a prompt, its stable id and its ``meta``; no images.

Sources (``--source``):

- a prompt file read by :func:`diffalign.data.prompts.read_prompts`: ``.txt``, ``.json``, ``.jsonl``,
  ``.csv``, ``.tsv`` or ``.parquet`` (``--column`` names the prompt column);
- ``geneval``: GenEval's 553 prompts from :func:`~diffalign.evaluation.geneval_prompts.generate_prompts`;
  each row's ``meta`` is its GenEval record (``tag``, ``include``, ``exclude`` where it has one,
  ``prompt``), what :func:`~diffalign.evaluation.geneval_rules.evaluate_image` reads;
- a preference dataset folder: its distinct prompts, each row keeping the id and ``meta`` of the
  first row that has the prompt.

Row ids: the source row's id for a dataset; otherwise ``sha256(occurrence, prompt)`` (16 hex
digits), where ``occurrence`` counts the same prompt earlier in the source, so an id depends only on
its prompt and its repeats, never on where the prompt stands. ``--dedup`` keeps the first of
repeated prompts (a dataset's prompts are always distinct).

Split: ``OUT/train`` and ``OUT/eval``, two prompt datasets. A row goes to ``eval`` when the first
8 bytes of ``sha256(id)``, read as a fraction of 2⁶⁴, fall below ``--eval-fraction``: a function of
the id alone, so adding prompts to a source never moves a row from one split to the other.

Writing: through :class:`~diffalign.data.writer.ShardWriter`, resumable, ``eval`` finished first and
``train`` last: a ``train`` that looks finished (its ``manifest.json``) means the whole build is.
``OUT`` must be new, empty, or hold only an earlier build's ``train/`` and ``eval/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from diffalign.arguments import number
from diffalign.data.writer import BuildError, ShardWriter, add_writer_arguments

BUILDER = "prompts"
GENEVAL = "geneval"
SPLITS = ("eval", "train")
"""The split folders, in the order they are finished: ``train`` last."""


def prompt_row_id(prompt: str, occurrence: int) -> str:
    """A stable id for the ``occurrence``-th (0 = first) repeat of ``prompt`` in a source: 16 hex
    digits of ``sha256(f"{occurrence}\\n{prompt}")``."""
    return hashlib.sha256(f"{occurrence}\n{prompt}".encode()).hexdigest()[:16]


def eval_share(row_id: str) -> float:
    """Where ``row_id`` falls in ``[0, 1)``: the first 8 bytes of ``sha256(row_id)`` over 2⁶⁴."""
    return int.from_bytes(hashlib.sha256(row_id.encode()).digest()[:8], "big") / 2**64


def split_of(row_id: str, eval_fraction: float) -> str:
    """``"eval"`` when :func:`eval_share` of ``row_id`` is below ``eval_fraction``, else ``"train"``."""
    return "eval" if eval_share(row_id) < eval_fraction else "train"


def _row(row_id: str, prompt: str, source: str, meta: str | None) -> dict:
    return {"id": row_id, "prompt": prompt, "images": [], "scores": None, "ranks": None, "captions": None,
            "source": source, "meta": meta}


def _numbered(prompts: list[str], metas: list[str | None], source: str, dedup: bool) -> tuple[list[dict], int]:
    """Rows with :func:`prompt_row_id` ids, and how many repeats ``dedup`` dropped."""
    seen: dict[str, int] = {}
    rows, duplicates = [], 0
    for prompt, meta in zip(prompts, metas):
        occurrence = seen.get(prompt, 0)
        seen[prompt] = occurrence + 1
        if dedup and occurrence:
            duplicates += 1
            continue
        rows.append(_row(prompt_row_id(prompt, occurrence), prompt, source, meta))
    return rows, duplicates


def file_rows(path: str | Path, column: str | None = None, dedup: bool = False) -> tuple[list[dict], int]:
    """The rows of a prompt file (any kind :func:`~diffalign.data.prompts.read_prompts` reads, blank
    prompts skipped), and the number of repeats dropped."""
    from diffalign.data.prompts import read_prompts

    prompts = read_prompts(path, column=column)
    return _numbered(prompts, [None] * len(prompts), "prompt-file", dedup)


def geneval_rows(dedup: bool = False) -> tuple[list[dict], int]:
    """GenEval's prompts, each row's ``meta`` its GenEval record as JSON."""
    from diffalign.evaluation.geneval_prompts import generate_prompts

    records = generate_prompts()
    return _numbered([r["prompt"] for r in records], [json.dumps(r) for r in records], GENEVAL, dedup)


def dataset_rows(folder: str | Path) -> tuple[list[dict], int]:
    """One row per distinct prompt of a preference (or prompt) dataset, with the id, ``meta`` and
    ``source`` of its first row; the number of later rows with a prompt already taken."""
    from diffalign.data.dataset import PreferenceDataset

    data = PreferenceDataset.open(folder)
    rows, seen, repeats = [], set(), 0
    for row_id, prompt, source, meta in zip(data.column("id"), data.column("prompt"), data.column("source"),
                                            data.column("meta")):
        prompt = prompt.strip()  # as read_prompts strips: " a cat" and "a cat" are one prompt
        if prompt in seen:
            repeats += 1
        elif prompt:  # a blank prompt is skipped, as read_prompts skips blank lines
            seen.add(prompt)
            rows.append(_row(row_id, prompt, source, meta))
    return rows, repeats


def source_rows(source: str, column: str | None = None, dedup: bool = False) -> tuple[list[dict], int, str]:
    """``(rows, repeats dropped, kind)`` of ``source``: ``geneval``, a dataset folder (it holds a
    ``manifest.json``) or a prompt file; ``kind`` says which (``geneval``, ``dataset``, ``file``).

    Raises:
        BuildError: an id that repeats (a hand-made dataset) or no prompts at all.
    """
    if source == GENEVAL:
        rows, dropped, kind = *geneval_rows(dedup), GENEVAL
    elif (Path(source) / "manifest.json").is_file():
        rows, dropped, kind = *dataset_rows(source), "dataset"
    else:
        rows, dropped, kind = *file_rows(source, column, dedup), "file"
    ids = [row["id"] for row in rows]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise BuildError(f"--source {source}: row ids repeat ({', '.join(repeated)}); a dataset's ids must be unique: "
                         "rebuild it, or pass its prompts as a file")
    if not rows:
        raise BuildError(f"--source {source}: holds no prompts")
    return rows, dropped, kind


def _check_out(out: Path, source: str) -> None:
    """``OUT`` apart from the source, holding nothing but this builder's earlier splits: checked for
    both splits before either is written."""
    from diffalign.data.records import check_output_folder
    from diffalign.outputs import FolderLock, OutputError, check_apart

    check_apart(out, {"--source": None if source == GENEVAL else source}, "--out")
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; give a folder")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in (*SPLITS, FolderLock.NAME)) if out.is_dir() else []
    if foreign:
        raise OutputError(f"--out {out} holds {', '.join(foreign[:4])}, which this command did not write (it writes "
                          f"only {' and '.join(s + '/' for s in SPLITS)} there): choose a new or empty folder")
    for name in SPLITS:
        check_output_folder(out / name, BUILDER)


def _write_split(root: Path, rows: list[dict], options: dict, extra: dict, shard_size: int, overwrite: bool,
                 inputs: dict) -> dict:
    """Write one split's rows as a prompt dataset (resuming after its last recorded shard)."""
    writer = ShardWriter(root, builder=BUILDER, options=options, shard_size=shard_size, overwrite=overwrite,
                         inputs=inputs, prompts_only=True)
    if not writer.complete:
        for position in range(writer.position, len(rows)):
            writer.add(rows[position])
            writer.advance(position + 1)
    return writer.finish(extra)


def build_prompts(source: str | Path, out: str | Path, *, column: str | None = None, eval_fraction: float = 0.1,
                  dedup: bool = False, shard_size: int = 1000, overwrite: bool = False) -> dict[str, dict]:
    """Write ``out/train`` and ``out/eval``, prompt-only datasets split by row id (resumable).

    Args:
        source: ``"geneval"``, a preference dataset folder, or a prompt file.
        out: the folder that holds the two splits.
        column: the prompt column of a file's records or table.
        eval_fraction: the share of ids that go to ``eval``, in ``[0, 1)`` (0: an empty ``eval``).
        dedup: keep only the first of repeated prompts (a file or ``geneval``).
        shard_size: rows per Parquet shard.
        overwrite: replace what an earlier build of this command wrote in the splits.

    Returns:
        ``{"eval": manifest, "train": manifest}``; each manifest's ``prompts`` entry gives the
        source, its kind, the prompts read, the repeats dropped and both splits' sizes.

    Raises:
        BuildError: ``eval_fraction`` outside ``[0, 1)``, a source without prompts or with repeated ids.
        OutputError: ``out`` holds files this command did not write, or lies in the source.
    """
    if not 0 <= eval_fraction < 1:
        raise BuildError(f"--eval-fraction must be in [0, 1) (train needs prompts), got {eval_fraction}")
    source, out = str(source), Path(out)
    _check_out(out, source)
    rows, dropped, kind = source_rows(source, column, dedup)
    parts = {name: [row for row in rows if split_of(row["id"], eval_fraction) == name] for name in SPLITS}
    where = source if kind == GENEVAL else str(Path(source).resolve())
    summary = {"source": where, "source_kind": kind, "prompts": len(rows), "repeats_dropped": dropped,
               "eval_fraction": eval_fraction, **{name: len(part) for name, part in parts.items()}}
    inputs = {"--source": None if kind == GENEVAL else source}
    # The rows' digest makes a resume over a changed source an error ("other options"), not a mixture.
    digest = hashlib.sha256(json.dumps([[r["id"], r["prompt"], r["meta"]] for r in rows]).encode()).hexdigest()[:16]
    manifests = {}
    for name in SPLITS:  # eval first, train last: a finished train means a finished build
        options = {"source": where, "column": column, "dedup": dedup, "eval_fraction": eval_fraction,
                   "rows": len(rows), "rows_digest": digest, "split": name, "shard_size": shard_size}
        manifests[name] = _write_split(out / name, parts[name], options, {"split": name, "prompts": summary},
                                       shard_size, overwrite, inputs)
    return manifests


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``diffalign build prompts`` and ``datasets_builders/prompts.py``."""
    parser.add_argument("--source", required=True, metavar="SOURCE",
                        help="a prompt file (.txt, .json, .jsonl, .csv, .tsv, .parquet), a preference dataset folder "
                        "(its distinct prompts), or 'geneval' (GenEval's 553 prompts, their metadata in meta)")
    parser.add_argument("--out", required=True, help="folder for OUT/train and OUT/eval (resumes an interrupted build)")
    parser.add_argument("--column", "--prompt-column", dest="column", default=None,
                        help="the prompt column of a file's records or table (default: prompt, text or caption)")
    parser.add_argument("--eval-fraction", type=number(0, 1), default=0.1,
                        help="share of prompts held out in OUT/eval, chosen by a hash of each row id, in [0, 1) "
                        "(default: 0.1)")
    parser.add_argument("--dedup", action="store_true", help="keep only the first of repeated prompts")
    add_writer_arguments(parser, progress=False)


def run(args: argparse.Namespace) -> int:
    """Run the builder from parsed arguments; prints what was written."""
    manifests = build_prompts(args.source, args.out, column=args.column, eval_fraction=args.eval_fraction,
                              dedup=args.dedup, shard_size=args.shard_size, overwrite=args.overwrite)
    summary = manifests["train"]["prompts"]
    repeats = f"; {summary['repeats_dropped']} repeated prompts dropped" if summary["repeats_dropped"] else ""
    print(f"wrote {summary['train']} prompts to {Path(args.out) / 'train'} and {summary['eval']} to "
          f"{Path(args.out) / 'eval'} (from {summary['prompts']} prompts of {args.source}{repeats})")
    return 0
