"""Pick-a-Pic v2 → preference groups (Kirstain et al., 2023, "Pick-a-Pic: An Open Dataset of
User Preferences for Text-to-Image Generation").

Each Pick-a-Pic row is one human comparison: ``caption``, two images ``jpg_0``/``jpg_1`` and
labels ``label_0``/``label_1`` (1/0: that image was preferred, 0.5/0.5: a tie), plus
``has_label``, ``are_different``, ``best_image_uid``, ``model_0``/``model_1``, ... The builder:

- drops unlabelled rows (``has_label`` false or labels missing) and ``are_different = False``;
- drops ties by default (as Diffusion-DPO does; ~12 % of v2), or keeps them with equal ranks
  ``[0, 0]`` under ``keep_ties``;
- orders each pair best first, never silently flipping a tie;
- drops rows with an unreadable image (an error under ``strict``), optionally duplicate prompts;
- streams the source (local Parquet, WebDataset tars, or a hub dataset) and writes our format,
  resumable; the manifest counts what was kept and what was dropped and why.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence


from diffalign.builders.human_pairs import Media, add_pair_arguments, write_pairs
from diffalign.data.images import image_bytes, is_readable
from diffalign.data.sources import KINDS, SourceError, iter_rows
from diffalign.data.writer import ShardWriter

BUILDER = "pick-a-pic"
SOURCE_NAME = "pick-a-pic-v2"
REQUIRED_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")
META_COLUMNS = ("ranking_id", "user_id", "best_image_uid", "created_at")
READ_COLUMNS = REQUIRED_COLUMNS + META_COLUMNS + (
    "has_label", "are_different", "image_0_uid", "image_1_uid", "model_0", "model_1",
)


def convert(raw: dict, index: int, keep_ties: bool = False) -> tuple[dict | None, str | None]:
    """One Pick-a-Pic row → ``(group row, None)`` or ``(None, reason it was dropped)``.

    Images are not checked here (see :func:`build_pick_a_pic`).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in raw]
    if missing:
        where = raw.get("_source_file", "the source")
        raise SourceError(f"{where} lacks the Pick-a-Pic column(s) {missing}; found {sorted(k for k in raw if not k.startswith('_'))}")
    labels = raw["label_0"], raw["label_1"]
    if raw.get("has_label") is False or None in labels:
        return None, "unlabelled"
    if raw.get("are_different") is False:
        return None, "not_different"
    tie = labels[0] == labels[1]
    if tie and not keep_ties:
        return None, "tie"
    prompt = raw["caption"]
    if not isinstance(prompt, str) or not prompt.strip():
        return None, "empty_prompt"
    order = (0, 1) if labels[0] >= labels[1] else (1, 0)
    meta = {k: raw[k] for k in META_COLUMNS if raw.get(k) is not None}
    meta["labels"] = [labels[i] for i in order]
    meta["tie"] = tie
    for name, column in (("models", "model_{}"), ("image_uids", "image_{}_uid")):
        if all(column.format(i) in raw for i in order):
            meta[name] = [raw[column.format(i)] for i in order]
    row = {
        "id": f"{index:010d}",
        "prompt": prompt,
        "images": [{"bytes": image_bytes(raw[f"jpg_{i}"]), "path": None} for i in order],
        "scores": None,
        "ranks": [0, 0] if tie else [0, 1],
        "captions": None,
        "source": SOURCE_NAME,
        "meta": json.dumps(meta, default=str),
    }
    return row, None


def build_pick_a_pic(
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
    """Build (or resume building) a preference dataset from Pick-a-Pic v2.

    Args:
        sources: Parquet files/folders/globs, WebDataset tars, or one hub dataset id.
        out: the dataset folder to write.
        kind: ``auto``, ``parquet``, ``wds`` or ``hub``.
        split: hub datasets only.
        keep_ties: keep 0.5/0.5 rows as groups with ranks ``[0, 0]``.
        dedup_prompts: keep only the first row of each prompt (case and spacing ignored).
        limit: stop after this many kept rows.
        shard_size: rows per Parquet shard.
        strict: an unreadable image stops the build instead of dropping the row.
        overwrite: discard whatever ``out`` holds.

    Returns:
        The manifest (also written to ``out/manifest.json``).
    """
    options = dict(
        sources=[str(s) for s in sources], kind=kind, split=split, keep_ties=keep_ties,
        dedup_prompts=dedup_prompts, limit=limit, shard_size=shard_size, strict=strict,
    )
    writer = ShardWriter(out, builder=BUILDER, options=options, shard_size=shard_size, overwrite=overwrite,
                         inputs={"sources": list(sources)})
    if writer.complete:
        return writer.finish()
    rows = iter_rows(sources, kind, start=writer.position, split=split, columns=READ_COLUMNS)
    stopped = write_pairs(writer, rows, lambda raw, index: convert(raw, index, keep_ties), _IMAGES,
                          dedup_prompts=dedup_prompts, limit=limit, strict=strict, progress=progress, desc="pick-a-pic")
    return writer.finish({
        "group_size": 2, "reward_models": [],
        "stopped_at_limit": stopped,
    })


_IMAGES = Media(is_readable, "corrupt_image", lambda row, index, raw: (
    f"row {index} ({raw.get('_source_file')}): an image cannot be decoded (strict mode)"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The builder's command-line options (shared by ``diffalign build pick-a-pic`` and
    ``datasets_builders/pick_a_pic.py``)."""
    parser.add_argument("sources", nargs="+", help="Pick-a-Pic v2 Parquet files or folders, WebDataset .tar shards, "
                        "glob patterns, or one hub dataset id (a re-upload; the original is gone)")
    add_pair_arguments(parser, KINDS, "image")


def run(args: argparse.Namespace) -> int:
    """Run the builder from parsed arguments; prints the manifest's counts."""
    manifest = build_pick_a_pic(
        args.sources, args.out, kind=args.kind, split=args.split, keep_ties=args.keep_ties,
        dedup_prompts=args.dedup_prompts, limit=args.limit, shard_size=args.shard_size,
        strict=args.strict, overwrite=args.overwrite, progress=not args.no_progress,
    )
    print(f"wrote {manifest['rows']} groups to {args.out}; counts: {json.dumps(manifest['counts'])}")
    return 0
