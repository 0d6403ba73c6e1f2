"""``diffalign score --images DATASET --into OUT``: a copy of a preference dataset with its
``scores`` column filled by one reward model.

OUT holds the same rows as the source (ids, prompts, images, ranks, captions, source, meta), in
the same order, with ``scores[k]`` the reward's score of ``images[k]`` (against that image's
caption when the row has captions, else the prompt: what ``diffalign score`` writes for the
same image). Images are copied as bytes, read with :meth:`PreferenceDataset.image_bytes`, so OUT
is self-contained and a path leading out of the source folder is never opened. A row with an
unreadable image is not written (counted as ``unreadable_image`` and listed in the manifest's
``skipped_rows``), or stops the run under ``strict``.

Rows go through :class:`~diffalign.data.writer.ShardWriter`: an interrupted run resumes from the
next shard when run again with the same options, without duplicate rows. The source is only read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from diffalign.data.schema import MANIFEST
from diffalign.data.writer import ShardWriter

BUILDER = "score-into"
DROP_REASON = "unreadable_image"


def own_texts(row: dict) -> list[str]:
    """What each image of a dataset row is scored against: its own caption when the row has
    captions, else the prompt (:func:`~diffalign.data.schema.image_texts`)."""
    from diffalign.data.schema import image_texts

    return image_texts(row["prompt"], row.get("captions"), len(row["images"]), row.get("captions") is not None)


def check_target(source: Path, out: Path, model: str | None = None) -> None:
    """What ``--into OUT`` must be, checked before the reward's weights load: apart from the source
    dataset (and the reward's weights), and free of files this command did not write
    (:func:`~diffalign.data.writer.check_output`)."""
    from diffalign.data.records import check_output

    check_output(out, BUILDER, {"--images": source, "--model": model}, option="--into")


def score_into_dataset(source: str | Path, out: str | Path, reward, *, weights: str, dtype: str,
                       batch_size: int = 16, strict: bool = False, shard_size: int = 1000,
                       overwrite: bool = False, progress: bool = True) -> dict:
    """Write (or resume writing) ``out``: the rows of the dataset ``source`` with ``scores`` by ``reward``.

    Args:
        source: a finished preference dataset folder (only read).
        out: the new dataset folder.
        reward: a loaded :class:`~diffalign.rewards.RewardModel`.
        weights: where its weights came from (recorded in the manifest).
        dtype: its dtype name (part of the options: a resume must score the same way).
        batch_size: images per reward-model call.
        strict: an unreadable image stops the run instead of skipping its row.
        shard_size: rows per shard, the unit of resumption.
        overwrite: delete what an earlier run of this command wrote in ``out`` (nothing else).

    Returns:
        The manifest of ``out``. Its ``counts`` hold ``read``, ``kept``, ``dropped``
        (``unreadable_image``), ``images_scored`` and ``scores_overwritten`` (rows that had scores).
    """
    from tqdm.auto import tqdm

    from diffalign.data.dataset import PreferenceDataset
    from diffalign.data.images import IMAGE_ERRORS, decode
    from diffalign.data.schema import UnsafeImagePathError
    from diffalign.rewards.base import ScoreInputError

    source, out = Path(source), Path(out)
    data = PreferenceDataset.open(source)
    source_manifest = (source / MANIFEST).read_bytes()
    options = {"source": str(source.resolve()), "source_manifest_sha256": hashlib.sha256(source_manifest).hexdigest(),
               "reward": reward.label, "weights": str(weights), "dtype": dtype, "strict": strict,
               "shard_size": shard_size}
    writer = ShardWriter(out, builder=BUILDER, options=options, shard_size=shard_size, overwrite=overwrite,
                         inputs={"--images": source}, option="--into")
    if writer.complete:
        return writer.finish()
    for key in ("images_scored", "scores_overwritten"):
        writer.counts.setdefault(key, 0)

    def flush_chunk(chunk: list[tuple[int, dict, list[bytes] | None, list]]) -> None:
        images = [im for _, _, _, pil in chunk for im in pil]
        prompts = [text for _, row, stored, _ in chunk if stored is not None
                   for text in own_texts(row)]
        scores = []
        for start in range(0, len(images), batch_size):
            scores += reward.score(images[start:start + batch_size], prompts[start:start + batch_size]).tolist()
        at = 0
        for position, row, stored, _ in chunk:
            if stored is None:
                writer.drop(DROP_REASON)
            else:
                k = len(stored)
                if row.get("scores") is not None:
                    writer.counts["scores_overwritten"] += 1
                writer.add({**row, "images": [{"bytes": b, "path": None} for b in stored],
                            "scores": [float(s) for s in scores[at:at + k]]})
                writer.counts["images_scored"] += k
                at += k
            writer.advance(position + 1)
            bar.update(1)
        bar.set_postfix(kept=writer.kept, skipped=writer.counts["dropped"].get(DROP_REASON, 0), refresh=False)

    with tqdm(total=len(data), initial=writer.position, unit=" row", desc="scoring", disable=not progress) as bar:
        chunk, pending = [], 0
        for position in range(writer.position, len(data)):
            row = data[position]
            stored, pil = [], []
            try:
                for k, image in enumerate(row["images"]):
                    stored.append(data.image_bytes(image))  # a path out of the dataset is never opened
                    pil.append(decode(stored[-1]))
            except (UnsafeImagePathError, *IMAGE_ERRORS) as err:
                if strict:
                    raise ScoreInputError(f"{row['id']}/{k}: unreadable image ({err})") from err
                stored, pil = None, []
            chunk.append((position, row, stored, pil))
            pending += len(pil)
            kept = sum(entry[2] is not None for entry in chunk)
            # A chunk also ends where a shard will: a resumed run starts at a shard boundary, and its
            # reward calls must hold the images an uninterrupted run's held (float32 kernels round a
            # batch by its size).
            if pending >= batch_size or len(writer.buffer) + kept >= shard_size:
                flush_chunk(chunk)
                chunk, pending = [], 0
        if chunk:
            flush_chunk(chunk)

    kept = set(writer.committed_column("id")) | {row["id"] for row in writer.buffer}
    skipped = [i for i in data.column("id") if i not in kept]
    src = json.loads(source_manifest)
    return writer.finish({
        "group_size": data.group_size,
        "reward_models": [{"label": reward.label, "name": reward.name, "weights": str(weights), "weight": 1.0}],
        "scores_from": {"reward": reward.label, "weights": str(weights),
                        "overwritten_rows": writer.counts["scores_overwritten"],
                        "previous_reward_models": src.get("reward_models", [])},
        "source_dataset": {"path": str(source.resolve()), **{k: v for k, v in src.items() if k != "shards"}},
        "skipped_rows": skipped,
    })
