"""``diffalign score``: score a folder of images, or every image of a preference dataset, with one
or more reward models, in batches, and write the scores as Parquet or JSON.

Prompts for a folder come from ``--prompts FILE`` (``.txt``: one line per image in sorted file
order; ``.json``: ``{file: prompt}`` or a list of records; ``.jsonl``: records with ``file_name``
and ``prompt``/``text``), from ``--prompt TEXT`` for every image, or from the folder's own
``metadata.jsonl`` (the ``datasets`` imagefolder convention). A preference dataset supplies its
own prompts (or per-image captions).

Output columns: ``image`` (path relative to the folder, or ``<row id>/<k>``), ``prompt``, and one
column per reward named by its label (``pickscore``, ``hpsv2.1``, ``clip_score[<backbone>]``...).
The file also records which weights each label came from and per-reward mean, std and count.

``--into OUT`` (a preference dataset and one ``--reward``) writes a new preference dataset instead:
the same rows with their ``scores`` column filled (see :mod:`diffalign.rewards.into_dataset`).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from diffalign.config import DTYPE_NAMES, torch_dtype
from diffalign.rewards.base import ScoreInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_FILE_KEYS = ("file_name", "file", "image", "path")
_PROMPT_KEYS = ("prompt", "text", "caption")


@dataclass
class Item:
    """One image to score: ``key`` names it in the output; ``read`` returns its bytes."""

    key: str
    prompt: str
    read: Callable[[], bytes]


# ----------------------------------------------------------------------------- shared options
def add_reward_arguments(parser: argparse.ArgumentParser, several: bool, required: bool = True) -> None:
    """``--reward``, ``--model``, ``--dtype``, ``--device``, ``--batch-size``, ``--no-progress``
    (also used by ``reward_models/agreement.py``)."""
    from diffalign.rewards import REWARDS

    names = ", ".join(REWARDS)
    if several:
        parser.add_argument("--reward", action="append", required=required, metavar="NAME",
                            help=f"reward model; repeat for several ({names})")
    else:
        parser.add_argument("--reward", required=True, metavar="NAME", help=f"reward model ({names})")
    parser.add_argument("--model", default=None, help="weights of the reward (local file or folder, or hub id); "
                        "default: the published ones. Only with a single --reward")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32", help="dtype the reward models run in (default: fp32)")
    parser.add_argument("--device", default="auto", help="torch device; auto = cuda when available (default: auto)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per reward-model call (default: 16)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def load_rewards_from_args(args: argparse.Namespace) -> list:
    """The reward models named by :func:`add_reward_arguments`' options."""
    from diffalign.rewards import load_reward

    names = args.reward if isinstance(args.reward, list) else [args.reward]
    if args.model is not None and len(names) != 1:
        raise ScoreInputError("--model names the weights of one reward; give a single --reward with it")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    return [load_reward(name, args.model, dtype=torch_dtype(args.dtype), device=device) for name in names]


# ----------------------------------------------------------------------------- inputs
def folder_items(folder: Path, prompts_file: Path | None = None, prompt: str | None = None,
                 needs_prompts: bool = True) -> list[Item]:
    """The images under ``folder`` (recursively, sorted by relative path) with their prompts."""
    if not folder.is_dir():
        raise ScoreInputError(f"{folder}: no such folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ScoreInputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    keys = [p.relative_to(folder).as_posix() for p in files]
    if prompt is not None:
        prompts = [prompt] * len(keys)
    elif prompts_file is not None or (folder / "metadata.jsonl").is_file():
        prompts = match_prompts(keys, prompts_file or folder / "metadata.jsonl")
    elif needs_prompts:
        raise ScoreInputError(f"{folder}: give --prompts FILE or --prompt TEXT (or put a metadata.jsonl in the folder)")
    else:
        prompts = [""] * len(keys)
    return [Item(key, text, path.read_bytes) for key, text, path in zip(keys, prompts, files)]


def match_prompts(keys: list[str], path: Path) -> list[str]:
    """One prompt per image key from a ``.txt``, ``.json`` or ``.jsonl`` prompts file."""
    if path.suffix == ".txt":
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        if len(lines) != len(keys):
            raise ScoreInputError(
                f"{path} has {len(lines)} prompts for {len(keys)} images (one line per image, in sorted file order)")
        return lines
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    elif path.suffix == ".json":
        records = json.loads(path.read_text())
    else:
        raise ScoreInputError(f"{path}: prompts must be a .txt, .json or .jsonl file")
    if isinstance(records, dict):
        by_file = records
    else:
        by_file = {_field(r, _FILE_KEYS, path): _field(r, _PROMPT_KEYS, path) for r in records}
    missing = [k for k in keys if k not in by_file and Path(k).name not in by_file]
    if missing:
        raise ScoreInputError(f"{path} has no prompt for {len(missing)} image(s), e.g. {missing[:3]}")
    return [by_file.get(k, by_file.get(Path(k).name)) for k in keys]


def _field(record: dict, names: tuple[str, ...], path: Path) -> str:
    for name in names:
        if name in record:
            return record[name]
    raise ScoreInputError(f"{path}: a record lacks all of {list(names)}: {record}")


def dataset_items(folder: Path) -> list[Item]:
    """Every image of a preference dataset, keyed ``<row id>/<k>``, with its caption or prompt."""
    from diffalign.data import PreferenceDataset
    from diffalign.rewards.into_dataset import own_texts

    dataset = PreferenceDataset.open(folder)
    items = []
    for row in dataset:
        for k, (image, caption) in enumerate(zip(row["images"], own_texts(row))):
            items.append(Item(f"{row['id']}/{k}", caption, lambda image=image: dataset.image_bytes(image)))
    return items


# ----------------------------------------------------------------------------- scoring
def score_items(rewards: list, items: list[Item], batch_size: int = 16, progress: bool = True,
                strict: bool = False) -> tuple[list[dict], list[str]]:
    """Rows ``{"image", "prompt", <label>: score, ...}`` and the keys of unreadable images
    (skipped; an error under ``strict``)."""
    from tqdm.auto import tqdm

    from diffalign.data.images import IMAGE_ERRORS, decode
    from diffalign.data.schema import UnsafeImagePathError

    rows, skipped = [], []
    bar = tqdm(total=len(items), unit="image", disable=not progress, desc="scoring")
    for start in range(0, len(items), batch_size):
        batch, images = [], []
        for item in items[start : start + batch_size]:
            try:
                images.append(decode(item.read()))
                batch.append(item)
            except (UnsafeImagePathError, *IMAGE_ERRORS) as err:  # a path out of the dataset is never opened
                if strict:
                    raise ScoreInputError(f"{item.key}: unreadable image ({err})") from err
                skipped.append(item.key)
        if batch:
            prompts = [item.prompt for item in batch]
            scores = {r.label: r.score(images, prompts).tolist() for r in rewards}
            rows += [{"image": item.key, "prompt": item.prompt, **{label: s[i] for label, s in scores.items()}}
                     for i, item in enumerate(batch)]
        bar.update(len(items[start : start + batch_size]))
    bar.close()
    return rows, skipped


def summarise(rows: list[dict], labels: list[str]) -> dict:
    """``{label: {"mean", "std", "n"}}`` (population std)."""
    out = {}
    for label in labels:
        values = torch.tensor([row[label] for row in rows], dtype=torch.float64)
        out[label] = {"mean": values.mean().item() if len(values) else None,
                      "std": values.std(correction=0).item() if len(values) else None, "n": len(values)}
    return out


def write_scores(out: Path, rows: list[dict], meta: dict) -> None:
    """``.parquet`` (metadata under the schema key ``diffalign``) or ``.json`` (``meta`` + ``scores``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    if out.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = ["image", "prompt", *meta["rewards"]]
        table = pa.table({c: [row[c] for row in rows] for c in columns})
        pq.write_table(table.replace_schema_metadata({"diffalign": json.dumps(meta)}), tmp)
    elif out.suffix == ".json":
        tmp.write_text(json.dumps({**meta, "scores": rows}, indent=2))
    else:
        raise ScoreInputError(f"--out must end in .parquet or .json, got {out.name}")
    tmp.replace(out)  # a reader never sees a half-written file


# ----------------------------------------------------------------------------- command
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, type=Path,
                        help="a folder of images (searched recursively) or a preference dataset folder (has manifest.json)")
    parser.add_argument("--prompts", type=Path, default=None,
                        help="prompts file for a folder: .txt (one line per image, sorted order), .json or .jsonl")
    parser.add_argument("--prompt", default=None, help="one prompt for every image of the folder")
    add_reward_arguments(parser, several=True)
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the scores: .parquet or .json (default: scores.parquet)")
    parser.add_argument("--into", type=Path, default=None, metavar="OUT",
                        help="with a preference dataset and one --reward: write a new dataset at OUT, the same rows "
                        "with their scores column filled by the reward (resumable; the source is not changed)")
    parser.add_argument("--shard-size", type=int, default=1000,
                        help="with --into: rows per Parquet shard, the unit of resumption (default: 1000)")
    parser.add_argument("--overwrite", action="store_true", help="with --into: discard what OUT holds and start again")
    parser.add_argument("--strict", action="store_true", help="fail on an unreadable image instead of skipping it")


def run(args: argparse.Namespace) -> int:
    from diffalign.data.schema import MANIFEST, SchemaError
    from diffalign.rewards import RewardLoadError, reward_class

    if args.into is not None:
        return run_into(args)
    if args.out is None:
        args.out = Path("scores.parquet")
    if args.out.suffix not in (".parquet", ".json"):
        print(f"error: --out must end in .parquet or .json, got {args.out.name}", file=sys.stderr)
        return 1
    try:
        # Inputs first: a wrong folder or prompts file should not wait for gigabytes of weights.
        if (args.images / MANIFEST).is_file():
            items = dataset_items(args.images)
        else:
            needs_prompts = any(reward_class(name).uses_prompts for name in args.reward)
            items = folder_items(args.images, args.prompts, args.prompt, needs_prompts)
        rewards = load_rewards_from_args(args)
        rows, skipped = score_items(rewards, items, args.batch_size, not args.no_progress, args.strict)
    except (ScoreInputError, RewardLoadError, SchemaError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    labels = [r.label for r in rewards]
    meta = {"rewards": {label: {"name": r.name, "weights": str(args.model or r.default_id)} for label, r in zip(labels, rewards)},
            "summary": summarise(rows, labels), "skipped": skipped}
    write_scores(args.out, rows, meta)
    means = ", ".join(f"{label} {s['mean']:.4g}" for label, s in meta["summary"].items() if s["mean"] is not None)
    print(f"scored {len(rows)} images ({len(skipped)} unreadable skipped): {means}; written to {args.out}")
    return 0


def _into_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the options of ``--into``, or ``None``."""
    from diffalign.data.schema import MANIFEST

    if len(args.reward) != 1:
        return (f"--into fills the one scores column of a dataset: give exactly one --reward (got {len(args.reward)}: "
                f"{', '.join(args.reward)}); to compare several, write them to a file with --out instead")
    if args.out is not None:
        return "--into writes a dataset and --out a scores file: give one of them"
    if args.prompts is not None or args.prompt is not None:
        return "--into scores a preference dataset, which supplies its own prompts: drop --prompts/--prompt"
    if not (args.images / MANIFEST).is_file():
        what = "an unfinished build" if (args.images / ".progress.json").exists() else (
            "a plain folder" if args.images.is_dir() else "not a folder")
        return (f"--into needs --images to be a preference dataset (a folder with {MANIFEST}); {args.images} is {what}. "
                "Build a dataset first (e.g. `diffalign build pick-a-pic ... --out DATASET`), or, for a folder of "
                "images, drop --into and write a scores file with --out")
    if args.shard_size < 1:
        return f"--shard-size must be at least 1, got {args.shard_size}"
    return None


def run_into(args: argparse.Namespace) -> int:
    """``--into``: a copy of the dataset ``--images`` with ``scores`` by the one ``--reward``."""
    from diffalign import stopping
    from diffalign.data.schema import SchemaError
    from diffalign.data.writer import BuildError
    from diffalign.rewards import RewardLoadError
    from diffalign.rewards.into_dataset import DROP_REASON, check_target, score_into_dataset

    problem = _into_problem(args)
    try:
        if problem:
            raise ScoreInputError(problem)
        check_target(args.images, args.into, args.overwrite)  # before gigabytes of weights load
        reward = load_rewards_from_args(args)[0]
        with stopping.stop_requests():  # SIGTERM/Ctrl-C: keep the shards written, resume on the next run
            manifest = score_into_dataset(
                args.images, args.into, reward, weights=str(args.model or reward.default_id), dtype=args.dtype,
                batch_size=args.batch_size, strict=args.strict, shard_size=args.shard_size, overwrite=args.overwrite,
                progress=not args.no_progress)
    except (ScoreInputError, RewardLoadError, SchemaError, BuildError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    counts = manifest["counts"]
    skipped = counts["dropped"].get(DROP_REASON, 0)
    overwritten = manifest["scores_from"]["overwritten_rows"]
    print(f"scored {counts.get('images_scored', 0)} images of {manifest['rows']} rows with {reward.label} "
          f"({skipped} row(s) with an unreadable image skipped"
          + (f"; {overwritten} row(s) had scores, replaced" if overwritten else "") + f"); written to {args.into}")
    return 0
