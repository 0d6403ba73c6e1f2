"""Helpers that write a small Pick-a-Pic-like source (Parquet and WebDataset tar)."""

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def jpeg(color, size=(32, 32)) -> bytes:
    """A solid-colour JPEG; ``size`` is (width, height)."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def pick_row(i, caption, label_0, label_1, *, are_different=True, has_label=True, jpg_0=None, jpg_1=None):
    return {
        "ranking_id": 1000 + i, "user_id": 7, "caption": caption,
        "jpg_0": jpg_0 if jpg_0 is not None else jpeg((10 * i, 0, 0)),
        "jpg_1": jpg_1 if jpg_1 is not None else jpeg((0, 10 * i, 200)),
        "label_0": label_0, "label_1": label_1, "are_different": are_different, "has_label": has_label,
        "model_0": "sdxl", "model_1": "sd15", "image_0_uid": f"u{i}a", "image_1_uid": f"u{i}b",
        "best_image_uid": f"u{i}a" if label_0 == 1 else (f"u{i}b" if label_1 == 1 else ""),
    }


def pick_rows():
    """Ten rows covering every rule; the comments say what the builder must do."""
    truncated = jpeg((1, 2, 3), (64, 64))[:300]
    return [
        pick_row(0, "a red cat", 1.0, 0.0),                      # kept as is
        pick_row(1, "a blue dog", 0.0, 1.0),                     # kept, flipped
        pick_row(2, "a tie", 0.5, 0.5),                          # tie: dropped (kept with --keep-ties)
        pick_row(3, "same images", 1.0, 0.0, are_different=False),  # dropped
        pick_row(4, "no label", None, None, has_label=False),    # unlabelled: dropped
        pick_row(5, "broken", 1.0, 0.0, jpg_1=b"not a jpeg"),    # corrupt: dropped
        pick_row(6, "A red  cat", 1.0, 0.0),                     # kept; a duplicate prompt under --dedup-prompts
        pick_row(7, "a green tree", 0.0, 1.0),                   # kept, flipped
        pick_row(8, "truncated", 1.0, 0.0, jpg_0=truncated),     # corrupt: dropped
        pick_row(9, "a house", 1.0, 0.0),                        # kept
    ]


def write_parquet(rows, folder, per_file=4):
    folder.mkdir(parents=True, exist_ok=True)
    for n, start in enumerate(range(0, len(rows), per_file)):
        pq.write_table(pa.Table.from_pylist(rows[start:start + per_file]), folder / f"train-{n:05d}.parquet")
    return folder


def write_tars(rows, folder, per_file=4):
    folder.mkdir(parents=True, exist_ok=True)
    for n, start in enumerate(range(0, len(rows), per_file)):
        with tarfile.open(folder / f"shard-{n:05d}.tar", "w") as tar:
            for i, row in enumerate(rows[start:start + per_file], start=start):
                columns = {k: v for k, v in row.items() if k not in ("jpg_0", "jpg_1")}
                for name, payload in (("json", json.dumps(columns).encode()), ("jpg_0", row["jpg_0"]), ("jpg_1", row["jpg_1"])):
                    info = tarfile.TarInfo(f"{i:06d}.{name}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return folder
