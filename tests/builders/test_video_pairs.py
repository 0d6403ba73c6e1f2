"""The video-pairs builder: which rows come out, in which order, from each kind of source, the
manifest's counts, the command line, and resumption after a stop."""

import csv
import io
import json
import signal
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from diffalign.builders import video_pairs
from diffalign.builders.video_pairs import build_video_pairs
from diffalign.cli import main
from diffalign.data.sources import SourceError
from diffalign.data.videos import encode_video, read_frames
from diffalign.data.writer import BuildError

CORRUPT = b"\x00\x00\x00\x18ftypmp42 but nothing after"


def clip(seed: int) -> bytes:
    """A 9-frame 16×16 MP4 of a smooth ramp, with a colour of its own per ``seed``."""
    colour = torch.tensor([(seed * 37 % 200 + 40) / 255, (seed * 71 % 200 + 40) / 255, 0.5]).view(3, 1, 1)
    ramp = torch.linspace(0.3, 1, 16)[None, :].expand(16, 16)
    return encode_video(torch.stack([colour * ramp * (1 - t / 20) for t in range(9)]))


@pytest.fixture(scope="module")
def clips():
    return [clip(i) for i in range(8)]


def pair_rows(clips):
    """Four comparisons covering the rules; the comments say what the builder must do."""
    return [
        {"caption": "a cat jumps", "video_0": clips[0], "video_1": clips[1], "label_0": 0.0, "label_1": 1.0,
         "has_label": True, "model_0": "wan", "model_1": "cogvideo"},              # kept, flipped
        {"caption": "a tie", "video_0": clips[2], "video_1": clips[3], "label_0": 0.5, "label_1": 0.5,
         "has_label": True, "model_0": "wan", "model_1": "cogvideo"},              # tie: dropped (kept with --keep-ties)
        {"caption": "no label", "video_0": clips[4], "video_1": clips[5], "label_0": None, "label_1": None,
         "has_label": False, "model_0": "wan", "model_1": "cogvideo"},             # unlabelled: dropped
        {"caption": "broken", "video_0": clips[6], "video_1": CORRUPT, "label_0": 1.0, "label_1": 0.0,
         "has_label": True, "model_0": "wan", "model_1": "cogvideo"},              # unreadable: dropped
    ]


@pytest.fixture
def parquet_source(clips, tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    rows = pair_rows(clips)
    pq.write_table(pa.Table.from_pylist(rows[:2]), folder / "train-00000.parquet")
    pq.write_table(pa.Table.from_pylist(rows[2:]), folder / "train-00001.parquet")
    return folder


def stored(folder) -> list[dict]:
    """The rows of a built dataset, straight from its shards."""
    manifest = json.loads((folder / "manifest.json").read_text())
    return [row for shard in manifest["shards"] for row in pq.read_table(folder / shard["file"]).to_pylist()]


def test_rules_order_and_counts(parquet_source, clips, tmp_path):
    manifest = build_video_pairs([str(parquet_source)], tmp_path / "out", progress=False)
    rows = stored(tmp_path / "out")
    assert [r["id"] for r in rows] == ["0000000000"]
    row = rows[0]
    # Best first: video_1 was preferred, so the pair is swapped.
    assert [v["bytes"] for v in row["images"]] == [clips[1], clips[0]]
    assert all(v["path"] is None for v in row["images"])
    assert row["ranks"] == [0, 1] and row["prompt"] == "a cat jumps" and row["source"] == "video-pairs"
    meta = json.loads(row["meta"])
    assert meta["labels"] == [1.0, 0.0] and meta["tie"] is False and meta["models"] == ["cogvideo", "wan"]
    assert read_frames(row["images"][0]["bytes"]).shape == (9, 3, 16, 16)
    assert manifest["media"] == "video" and manifest["group_size"] == 2 and manifest["rows"] == 1
    assert manifest["counts"] == {"read": 4, "kept": 1, "dropped": {"tie": 1, "unlabelled": 1, "unreadable_video": 1}}
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest


def test_keep_ties_never_flips_a_tie(parquet_source, clips, tmp_path):
    manifest = build_video_pairs([str(parquet_source)], tmp_path / "ties", keep_ties=True, progress=False)
    rows = stored(tmp_path / "ties")
    assert [r["id"] for r in rows] == ["0000000000", "0000000001"]
    tie = rows[1]
    assert tie["ranks"] == [0, 0] and json.loads(tie["meta"])["tie"] is True
    assert [v["bytes"] for v in tie["images"]] == [clips[2], clips[3]]
    assert manifest["counts"]["ties_kept"] == 1
    assert manifest["counts"]["dropped"] == {"unlabelled": 1, "unreadable_video": 1}


def test_strict_stops_at_an_unreadable_video(parquet_source, tmp_path):
    with pytest.raises(BuildError, match=r"row 3 \(train-00001.parquet\): video 1 of the pair .*cannot be found or decoded"):
        build_video_pairs([str(parquet_source)], tmp_path / "strict", strict=True, progress=False)


def test_missing_column_is_named(clips, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    row = {k: v for k, v in pair_rows(clips)[0].items() if k not in ("label_1", "caption")}
    pq.write_table(pa.Table.from_pylist([row]), folder / "x.parquet")
    with pytest.raises(SourceError, match=r"x.parquet lacks the video-pair column\(s\) \['caption or prompt', 'label_1'\]"):
        build_video_pairs([str(folder)], tmp_path / "out", progress=False)


def _write_videos(clips, folder):
    """The clips as files ``videos/clip<i>.mp4`` under ``folder``; returns their relative paths."""
    (folder / "videos").mkdir(parents=True)
    paths = []
    for i, data in enumerate(clips):
        (folder / "videos" / f"clip{i}.mp4").write_bytes(data)
        paths.append(f"videos/clip{i}.mp4")
    (folder / "videos" / "clip7.mp4").unlink()  # one missing file: its row is unreadable
    return paths


def test_jsonl_and_csv_tables_with_relative_paths(clips, tmp_path):
    folder = tmp_path / "tables"
    paths = _write_videos(clips, folder)
    table = [  # (prompt, video_0, video_1, label_0, label_1)
        ("a dog runs", paths[0], paths[1], 1, 0),       # kept as is
        ("a tie", paths[2], paths[3], 0.5, 0.5),        # tie: dropped
        ("unlabelled", paths[4], paths[5], None, None),  # dropped
        ("file gone", paths[6], paths[7], 0, 1),        # clip7.mp4 is missing: unreadable
    ]
    columns = ("prompt", "video_0", "video_1", "label_0", "label_1")
    with open(folder / "pairs.jsonl", "w") as handle:
        for values in table:
            handle.write(json.dumps(dict(zip(columns, values))) + "\n\n")  # blank lines are not rows
    with open(folder / "pairs.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows([["" if v is None else v for v in values] for values in table])

    by_jsonl = build_video_pairs([str(folder / "pairs.jsonl")], tmp_path / "j", progress=False)
    by_csv = build_video_pairs([str(folder / "pairs.csv")], tmp_path / "c", progress=False)
    rows = stored(tmp_path / "j")
    assert [r["prompt"] for r in rows] == ["a dog runs"]
    assert [v["bytes"] for v in rows[0]["images"]] == [clips[0], clips[1]]  # bytes stored, not paths
    assert json.loads(rows[0]["meta"])["video_paths"] == [paths[0], paths[1]]
    assert by_jsonl["counts"]["dropped"] == {"tie": 1, "unlabelled": 1, "unreadable_video": 1}
    assert stored(tmp_path / "c") == rows and by_csv["counts"] == by_jsonl["counts"]
    with pytest.raises(SourceError, match="mix kinds of file"):
        build_video_pairs([str(folder)], tmp_path / "both", progress=False)


def test_webdataset_gives_the_same_rows(parquet_source, clips, tmp_path):
    tars = tmp_path / "wds"
    tars.mkdir()
    for n, chunk in enumerate((pair_rows(clips)[:3], pair_rows(clips)[3:])):
        with tarfile.open(tars / f"shard-{n:05d}.tar", "w") as tar:
            for i, row in enumerate(chunk):
                columns = {k: v for k, v in row.items() if k not in ("video_0", "video_1", "caption")}
                members = (("json", json.dumps(columns).encode()), ("txt", row["caption"].encode()),
                           ("0.mp4", row["video_0"]), ("video_1", row["video_1"]))
                for name, payload in members:
                    info = tarfile.TarInfo(f"{n}{i:05d}.{name}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    a = build_video_pairs([str(parquet_source)], tmp_path / "a", keep_ties=True, progress=False)
    b = build_video_pairs([str(tars / "*.tar")], tmp_path / "b", keep_ties=True, progress=False)
    assert stored(tmp_path / "b") == stored(tmp_path / "a") and len(stored(tmp_path / "a")) == 2
    assert a["counts"] == b["counts"]


def test_command_line_builds_and_names_errors(parquet_source, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["build", "video-pairs", str(parquet_source), "--out", str(out), "--keep-ties", "--no-progress"]) == 0
    assert "wrote 2 video pairs" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["media"] == "video" and manifest["options"]["keep_ties"] is True and manifest["rows"] == 2
    assert main(["build", "video-pairs", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nowhere" in err and "Traceback" not in err


def test_a_stop_keeps_the_rows_so_far_and_the_build_continues(parquet_source, tmp_path, monkeypatch, capsys):
    """SIGTERM while row 1 is read: rows 0 and 1 are written as a shard, the build exits 143, and
    the same command then finishes it with exactly the rows of an uninterrupted build."""
    original = video_pairs.convert

    def signalled(raw, index, keep_ties=False):
        if index == 1:
            signal.raise_signal(signal.SIGTERM)
        return original(raw, index, keep_ties)

    out = tmp_path / "out"
    command = ["build", "video-pairs", str(parquet_source), "--out", str(out), "--keep-ties", "--shard-size", "4",
               "--no-progress"]
    monkeypatch.setattr(video_pairs, "convert", signalled)
    assert main(command) == 143
    assert "run the same command again" in capsys.readouterr().err
    progress = json.loads((out / ".progress.json").read_text())
    assert progress["position"] == 2 and [s["rows"] for s in progress["shards"]] == [2]

    monkeypatch.setattr(video_pairs, "convert", original)
    assert main(command) == 0
    build_video_pairs([str(parquet_source)], tmp_path / "straight", keep_ties=True, shard_size=4, progress=False)
    resumed = stored(out)
    assert [r["id"] for r in resumed] == ["0000000000", "0000000001"]  # no duplicates
    assert resumed == stored(tmp_path / "straight")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == json.loads((tmp_path / "straight" / "manifest.json").read_text())["counts"]
    assert manifest["counts"]["read"] == 4 and manifest["media"] == "video"
