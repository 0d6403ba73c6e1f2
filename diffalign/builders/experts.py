"""Expert datasets: one image per prompt (``K = 1``), the data of Diffusion-DRO (Wu et al., NeurIPS
2025, "Ranking-based Preference Optimization for Diffusion Models from Implicit User Feedback").

Built from an existing preference dataset (rows best first), two ways:

- ``first`` (default): each row's best image, index 0, with its prompt, in the source's order. A
  row whose images all share one rank (a tie, ``K ≥ 2``) has no best image and is skipped (``tie``).
- ``scores``: every image of every row is a candidate, ranked by its entry of the ``scores`` column
  (highest first; equal scores by row, then position). This follows Diffusion-DRO's expert set
  (official ``tools/pickapic.py --top 500``): score every unique (image, caption) of Pick-a-Pic v2
  and keep the top ``N``, with **no limit per prompt**: a prompt with several high-scoring images
  gives several experts, each its own row. Rows without scores are skipped (``no_scores``), and so
  are images whose score is not finite (``non_finite_score``). Score a dataset first with
  ``diffalign score --images DATASET --reward pickscore --into OUT``.

Either way ``top`` (``--top N``) stops after ``N`` experts (``None``: all of them; what it leaves
out is counted as ``beyond_top``); an (image, prompt) already kept is skipped (``duplicate``:
Pick-a-Pic shows one image in several pairs; an image is known by the SHA-256 of its bytes); an
image that cannot be read or decoded is skipped (``unreadable_image``). Images are copied as
bytes, so the expert folder stands alone.

Each row: ``id`` ``<source id>-<position of the image>``, the prompt, ``images`` ``[image]``,
``scores`` ``[score]`` (or null when the source has none), ``ranks`` null, ``captions``
``[caption]`` when the source row has captions, ``source`` as in the source row, and ``meta``
``{"expert": {"row", "image", "score", "sha256"}, "source_meta": <the source row's meta>}``.

Resumable like every builder: the writer's position counts the source rows (``first``) or the
ranked candidates (``scores``) consumed, and the ranking is a pure function of the source.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

from tqdm.auto import tqdm

from diffalign.arguments import COUNT
from diffalign.data.writer import BuildError, ShardWriter, add_writer_arguments

BUILDER = "experts"
METHODS = ("first", "scores")


def rank_candidates(scores: list[list[float] | None]) -> tuple[list[tuple[int, int, float]], int, int]:
    """Every scored image of a dataset, best first.

    Args:
        scores: the ``scores`` column, one list (or ``None``) per row.

    Returns:
        ``(candidates, rows without scores, images with a non-finite score)``; each candidate is
        ``(row, position, score)``, sorted by score (highest first), then row, then position.
    """
    candidates, unscored, non_finite = [], 0, 0
    for row, values in enumerate(scores):
        if not values:
            unscored += 1
            continue
        for position, value in enumerate(values):
            if value is None or not math.isfinite(value):
                non_finite += 1
            else:
                candidates.append((row, position, float(value)))
    candidates.sort(key=lambda c: (-c[2], c[0], c[1]))
    return candidates, unscored, non_finite


def _is_tie(row: dict) -> bool:
    ranks = row.get("ranks")
    return bool(ranks) and len(ranks) >= 2 and len(set(ranks)) == 1


def build_experts(
    data_dir: str | Path,
    out: str | Path,
    *,
    by: str = "first",
    top: int | None = None,
    shard_size: int = 1000,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write a ``K = 1`` expert dataset from a preference dataset (resumable).

    Args:
        data_dir: the source preference dataset (any ``K``; rows best first).
        out: the expert dataset folder.
        by: ``first`` (each row's image 0) or ``scores`` (all images ranked by their score).
        top: keep at most this many experts (``None``: every one).
        shard_size: rows per Parquet shard, the unit of resumption.
        overwrite: discard what ``out`` holds.
        progress: show a progress bar.

    Returns:
        The manifest, with ``group_size`` 1 and ``experts`` summarising the choice.

    Raises:
        BuildError: an unknown ``by``, ``top`` below 1, ``by="scores"`` on a dataset without scores,
            or an ``out`` that holds another build.
    """
    from diffalign.data.dataset import PreferenceDataset
    from diffalign.data.images import is_readable
    from diffalign.data.schema import SchemaError

    if by not in METHODS:
        raise BuildError(f"unknown --by {by!r}; choose one of {', '.join(METHODS)}")
    if top is not None and top < 1:
        raise BuildError(f"--top must be 1 or more, got {top}")
    data = PreferenceDataset.open(data_dir)
    if by == "scores":
        candidates, unscored, non_finite = rank_candidates(data.column("scores"))
        if not candidates:
            raise BuildError(f"{data_dir}: no image has a score, so --by scores has nothing to rank; add them with "
                             "`diffalign score --images DATASET --reward pickscore --into OUT`, or use --by first")
    else:
        candidates, unscored, non_finite = [(row, 0, None) for row in range(len(data))], 0, 0
    options = dict(data=str(Path(data_dir).resolve()), source_rows=len(data), by=by, top=top, shard_size=shard_size)
    writer = ShardWriter(out, builder=BUILDER, options=options, shard_size=shard_size, overwrite=overwrite,
                         inputs={"--from": data_dir})
    if writer.complete:
        return writer.finish()
    dropped = writer.counts["dropped"]
    for reason, n in (("no_scores", unscored), ("non_finite_score", non_finite)):
        if n:
            dropped[reason] = n  # set, not added: the same on a resumed build
    seen = {(prompt, json.loads(meta)["expert"]["sha256"])  # what a resumed build already kept
            for prompt, meta in zip(writer.committed_column("prompt"), writer.committed_column("meta"))}
    bar = tqdm(total=top if top is not None else len(candidates),
               initial=writer.kept if top is not None else writer.position,
               unit=" experts" if top is not None else (" rows" if by == "first" else " images"),
               desc="experts", disable=not progress)
    with bar:
        for position in range(writer.position, len(candidates)):
            if top is not None and writer.kept >= top:
                break
            index, image_index, score = candidates[position]
            row = data[index]
            kept = False
            if by == "first" and _is_tie(row):
                writer.drop("tie")
            else:
                try:
                    stored = data.image_bytes(row["images"][image_index])
                except (SchemaError, OSError):  # an unsafe path, no bytes and no path, a missing file
                    stored = None
                if stored is None or not is_readable(stored):
                    writer.drop("unreadable_image")
                else:
                    digest = hashlib.sha256(stored).hexdigest()
                    if (row["prompt"], digest) in seen:
                        writer.drop("duplicate")
                    else:
                        seen.add((row["prompt"], digest))
                        writer.add(_expert_row(row, image_index, stored, digest))
                        kept = True
            writer.advance(position + 1)
            if top is None or kept:
                bar.update(1)
            bar.set_postfix(kept=writer.kept, refresh=False)
    beyond = len(candidates) - writer.counts["read"]
    if beyond:
        dropped["beyond_top"] = beyond
    writer.flush()
    kept_scores = [s[0] for s in writer.committed_column("scores") if s]
    summary = {
        "by": by, "top": top, "source_rows": len(data), "candidates": len(candidates), "kept": writer.kept,
        "stopped_at_top": top is not None and writer.kept >= top,
        "mean_score": sum(kept_scores) / len(kept_scores) if kept_scores else None,
        "min_score": min(kept_scores) if kept_scores else None,
    }
    return writer.finish({"group_size": 1, "reward_models": data.manifest.get("reward_models", []),
                          "source": str(Path(data_dir).resolve()), "experts": summary})


def _expert_row(row: dict, image_index: int, stored: bytes, digest: str) -> dict:
    scores, captions = row.get("scores"), row.get("captions")
    score = scores[image_index] if scores else None
    return {
        "id": f"{row['id']}-{image_index}",
        "prompt": row["prompt"],
        "images": [{"bytes": stored, "path": None}],
        "scores": None if score is None else [score],
        "ranks": None,
        "captions": None if captions is None else [captions[image_index]],
        "source": row["source"],
        "meta": json.dumps({
            "expert": {"row": row["id"], "image": image_index, "score": score, "sha256": digest},
            "source_meta": json.loads(row["meta"]) if row.get("meta") else None,
        }),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``diffalign build experts`` and ``datasets_builders/experts.py``."""
    parser.add_argument("--from", dest="source", required=True, metavar="DATASET",
                        help="preference dataset folder to take the experts from (rows best first)")
    parser.add_argument("--out", required=True, help="folder of the expert dataset (resumes an interrupted build)")
    parser.add_argument("--by", choices=METHODS, default="first",
                        help="first: each row's best image (index 0); scores: every image ranked by its score, "
                        "several per prompt allowed, as Diffusion-DRO picks its experts (default: first)")
    parser.add_argument("--top", type=COUNT, default=None, metavar="N",
                        help="keep at most N experts: the first N rows' (first) or the N best-scored images "
                        "(scores; Diffusion-DRO: 500) (default: all)")
    add_writer_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run the builder from parsed arguments; prints what was kept."""
    manifest = build_experts(args.source, args.out, by=args.by, top=args.top, shard_size=args.shard_size,
                             overwrite=args.overwrite, progress=not args.no_progress)
    summary = manifest["experts"]
    mean = f", mean score {summary['mean_score']:.4g}" if summary["mean_score"] is not None else ""
    print(f"wrote {manifest['rows']} expert images (one per row) to {args.out} from {summary['source_rows']} rows"
          f"{mean}; skipped: {json.dumps(manifest['counts']['dropped'], sort_keys=True)}")
    return 0
