"""The loop shared by the builders of human-labelled pairs (Pick-a-Pic images, video pairs):
convert each source row, drop duplicates and unreadable media, count what was dropped and why,
resumable through the :class:`~diffalign.data.writer.ShardWriter`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Iterable

from tqdm.auto import tqdm

from diffalign.arguments import COUNT
from diffalign.data.writer import BuildError, ShardWriter, add_writer_arguments


def prompt_key(prompt: str) -> str:
    """What makes two prompts the same for ``dedup_prompts``: case and spacing ignored."""
    return " ".join(prompt.split()).casefold()


@dataclass(frozen=True)
class Media:
    """How a builder checks its rows' media: ``readable(bytes) -> bool``, the reason an unreadable
    row is counted under, and the error under ``strict`` for ``(row, index, raw)``."""

    readable: Callable[[bytes | None], bool]
    unreadable_reason: str
    strict_message: Callable[[dict, int, dict], str]


def write_pairs(writer: ShardWriter, rows: Iterable[dict], convert: Callable[[dict, int], tuple], media: Media, *,
                dedup_prompts: bool, limit: int | None, strict: bool, progress: bool, desc: str) -> bool:
    """Convert ``rows`` (read from ``writer.position`` on) into ``writer``; returns whether the
    build stopped at ``limit`` kept rows. ``convert(raw, index)`` gives ``(row, None)`` or
    ``(None, reason)``; a kept tie (``meta["tie"]``) is counted as ``ties_kept``."""
    seen = {prompt_key(p) for p in writer.committed_column("prompt")} if dedup_prompts else set()
    with tqdm(initial=writer.position, unit=" rows", desc=desc, disable=not progress) as bar:
        for index, raw in enumerate(rows, start=writer.position):
            if limit is not None and writer.kept >= limit:
                break
            row, reason = convert(raw, index)
            if row is not None and dedup_prompts and prompt_key(row["prompt"]) in seen:
                row, reason = None, "duplicate_prompt"
            if row is not None and not all(media.readable(item["bytes"]) for item in row["images"]):
                if strict:
                    raise BuildError(media.strict_message(row, index, raw))
                row, reason = None, media.unreadable_reason
            if row is None:
                writer.drop(reason)
            else:
                writer.add(row)
                seen.add(prompt_key(row["prompt"]))
                if json.loads(row["meta"])["tie"]:
                    writer.counts["ties_kept"] = writer.counts.get("ties_kept", 0) + 1
            writer.advance(index + 1)
            bar.update(1)
            bar.set_postfix(kept=writer.kept, refresh=False)
    return limit is not None and writer.kept >= limit


def add_pair_arguments(parser, kinds: tuple[str, ...], media: str) -> None:
    """The options both pair builders take after their ``sources``: ``--out``, ``--kind``, ``--split``,
    ``--keep-ties``, ``--dedup-prompts``, ``--limit``, ``--strict`` and the writer's; ``media`` names
    what ``--strict`` is about ("image" or "video")."""
    parser.add_argument("--out", required=True, help="dataset folder to write (resumes if it holds an interrupted build)")
    parser.add_argument("--kind", choices=kinds, default="auto", help="source kind (default: from the file names)")
    parser.add_argument("--split", default="train", help="split of a hub dataset (default: train)")
    parser.add_argument("--keep-ties", action="store_true",
                        help="keep 0.5/0.5 rows as tied groups (ranks [0, 0]) instead of dropping them")
    parser.add_argument("--dedup-prompts", action="store_true", help="keep only the first row of each prompt")
    parser.add_argument("--limit", type=COUNT, default=None, help="stop after this many kept rows")
    parser.add_argument("--strict", action="store_true", help=f"stop at the first unreadable {media} instead of dropping its row")
    add_writer_arguments(parser)
