"""Pair datasets from ranked ones: a group's best and worst sample, or every pair of it (the
``--pairs`` of :mod:`diffalign.builders.synthetic`).
"""

from __future__ import annotations

import json
from pathlib import Path

from diffalign.builders.scoring import competition_ranks
from diffalign.data.writer import BuildError, ShardWriter

PAIRS_BUILDER = "synthetic-pairs"
PAIR_MODES = ("best-worst", "all")


def ranked_to_pairs(ranked: str | Path, out: str | Path, mode: str = "best-worst", shard_size: int = 1000,
                    overwrite: bool = False) -> dict:
    """A pair dataset from a ranked one.

    ``best-worst``: one pair per group, its first and last image. ``all``: every ``(i, j)``,
    ``i < j`` in best-first order, ``K(K-1)/2`` pairs per group. Pairs of equal score get ranks
    ``[0, 0]`` (a tie); ids are ``<group id>-<i>-<j>``; ``meta`` keeps the group's entries for the two images.
    """
    from diffalign.data.dataset import PreferenceDataset

    if mode not in PAIR_MODES:
        raise BuildError(f"pair mode must be one of {PAIR_MODES}, not {mode!r}")
    data = PreferenceDataset.open(ranked)
    if data.group_size < 2:
        raise BuildError(f"{ranked} has one image per prompt (K = {data.group_size}): no pairs can be made from it")
    writer = ShardWriter(out, builder=PAIRS_BUILDER, options={"ranked": str(Path(ranked).resolve()), "mode": mode},
                         shard_size=shard_size, overwrite=overwrite)
    if writer.complete:
        return writer.finish()
    for position in range(writer.position, len(data)):
        row = data[position]
        k = len(row["images"])
        chosen = [(0, k - 1)] if mode == "best-worst" else [(i, j) for i in range(k) for j in range(i + 1, k)]
        meta = json.loads(row["meta"] or "{}")
        for i, j in chosen:
            scores = [row["scores"][i], row["scores"][j]]
            pair_meta = {"group": row["id"], "positions": [i, j]}
            for key in ("generators", "seeds"):
                if key in meta:
                    pair_meta[key] = [meta[key][i], meta[key][j]]
            writer.add({
                "id": f"{row['id']}-{i}-{j}", "prompt": row["prompt"], "images": [row["images"][i], row["images"][j]],
                "scores": scores, "ranks": competition_ranks(scores), "captions": None,
                "source": PAIRS_BUILDER, "meta": json.dumps(pair_meta),
            })
        writer.advance(position + 1)
    return writer.finish({"group_size": 2, "pair_mode": mode, "reward_models": data.manifest.get("reward_models", [])})
