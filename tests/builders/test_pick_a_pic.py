"""The Pick-a-Pic v2 builder: which rows come out, in which order, and the manifest's counts."""

import json
import os
import signal
import subprocess
import sys
import time

import datasets
import pytest

from diffalign.builders.pick_a_pic import build_pick_a_pic
from diffalign.data import PreferenceDataset
from diffalign.data.sources import SourceError
from diffalign.data.writer import BuildError

from pickapic_source import jpeg, pick_row, pick_rows, write_parquet, write_tars


def _rows(folder):
    return list(PreferenceDataset.open(folder))


def test_rules_order_and_counts(pick_source, tmp_path):
    manifest = build_pick_a_pic([str(pick_source)], tmp_path / "out", shard_size=2, progress=False)
    source = pick_rows()
    rows = _rows(tmp_path / "out")
    assert [r["id"] for r in rows] == ["0000000000", "0000000001", "0000000006", "0000000007", "0000000009"]
    assert [r["prompt"] for r in rows] == ["a red cat", "a blue dog", "A red  cat", "a green tree", "a house"]
    # Best first: rows 1 and 7 preferred jpg_1, so their images are swapped.
    for row in rows:
        i = int(row["id"])
        first, second = ("jpg_1", "jpg_0") if source[i]["label_1"] == 1.0 else ("jpg_0", "jpg_1")
        assert [img["bytes"] for img in row["images"]] == [source[i][first], source[i][second]]
        assert row["ranks"] == [0, 1] and row["scores"] is None and row["captions"] is None
        assert json.loads(row["meta"])["labels"] == [1.0, 0.0]
    assert json.loads(rows[1]["meta"])["models"] == ["sd15", "sdxl"]
    assert manifest["rows"] == 5 and manifest["group_size"] == 2
    assert manifest["counts"] == {
        "read": 10, "kept": 5,
        "dropped": {"tie": 1, "not_different": 1, "unlabelled": 1, "corrupt_image": 2},
    }
    assert [s["rows"] for s in manifest["shards"]] == [2, 2, 1]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest


def test_keep_ties_dedup_and_limit(pick_source, tmp_path):
    manifest = build_pick_a_pic([str(pick_source)], tmp_path / "ties", keep_ties=True, dedup_prompts=True, progress=False)
    rows = _rows(tmp_path / "ties")
    assert [r["id"] for r in rows] == ["0000000000", "0000000001", "0000000002", "0000000007", "0000000009"]
    tie = rows[2]
    assert tie["ranks"] == [0, 0] and json.loads(tie["meta"])["tie"] is True
    # A tie is never flipped: jpg_0 stays first.
    assert tie["images"][0]["bytes"] == pick_rows()[2]["jpg_0"]
    assert manifest["counts"]["dropped"] == {"not_different": 1, "unlabelled": 1, "corrupt_image": 2, "duplicate_prompt": 1}
    assert manifest["counts"]["ties_kept"] == 1

    limited = build_pick_a_pic([str(pick_source)], tmp_path / "limited", limit=2, progress=False)
    assert [r["id"] for r in _rows(tmp_path / "limited")] == ["0000000000", "0000000001"]
    assert limited["stopped_at_limit"] is True and limited["counts"]["read"] == 2


def test_strict_stops_at_a_corrupt_image(pick_source, tmp_path):
    with pytest.raises(BuildError, match="row 5 .*cannot be decoded"):
        build_pick_a_pic([str(pick_source)], tmp_path / "strict", strict=True, progress=False)


def test_missing_column_is_named(tmp_path):
    rows = [{k: v for k, v in pick_row(0, "x", 1.0, 0.0).items() if k != "label_1"}]
    source = write_parquet(rows, tmp_path / "bad")
    with pytest.raises(SourceError, match=r"train-00000.parquet lacks the Pick-a-Pic column\(s\) \['label_1'\]"):
        build_pick_a_pic([str(source)], tmp_path / "out", progress=False)


def test_webdataset_gives_the_same_rows(tmp_path):
    parquet = write_parquet(pick_rows(), tmp_path / "pq")
    tars = write_tars(pick_rows(), tmp_path / "wds")
    a = build_pick_a_pic([str(parquet)], tmp_path / "a", progress=False)
    b = build_pick_a_pic([str(tars / "*.tar")], tmp_path / "b", progress=False)
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")
    assert a["counts"] == b["counts"]


def test_hub_path_streams_with_datasets(pick_source, tmp_path):
    # A hub id goes through datasets' streaming loader; a local folder exercises the same call.
    manifest = build_pick_a_pic([str(pick_source)], tmp_path / "hub", kind="hub", progress=False)
    assert manifest["counts"]["kept"] == 5
    assert _rows(tmp_path / "hub") == _rows_of_parquet_build(pick_source, tmp_path)


def _rows_of_parquet_build(source, tmp_path):
    build_pick_a_pic([str(source)], tmp_path / "reference", progress=False)
    return _rows(tmp_path / "reference")


def test_readable_by_datasets(pick_source, tmp_path):
    build_pick_a_pic([str(pick_source)], tmp_path / "out", shard_size=2, progress=False)
    by_dir = datasets.load_dataset("parquet", data_dir=str(tmp_path / "out" / "data"), split="train")
    by_card = datasets.load_dataset(str(tmp_path / "out"), split="train")
    for ds in (by_dir, by_card):
        assert ds["id"] == [r["id"] for r in _rows(tmp_path / "out")]
        assert ds[0]["images"][0].size == (32, 32)  # decoded to PIL by the Image feature


def test_rerun_of_a_finished_build_is_a_no_op_and_options_must_match(pick_source, tmp_path):
    first = build_pick_a_pic([str(pick_source)], tmp_path / "out", progress=False)
    assert build_pick_a_pic([str(pick_source)], tmp_path / "out", progress=False) == first
    with pytest.raises(BuildError, match="other options"):
        build_pick_a_pic([str(pick_source)], tmp_path / "out", keep_ties=True, progress=False)
    redone = build_pick_a_pic([str(pick_source)], tmp_path / "out", keep_ties=True, overwrite=True, progress=False)
    assert redone["rows"] == 6


def _big_source(folder, n=4000):
    rows = [pick_row(i, f"prompt {i}", float(i % 2), float(1 - i % 2), jpg_0=jpeg((i % 256, 0, 0), (8, 8)),
                     jpg_1=jpeg((0, i % 256, 0), (8, 8))) for i in range(n)]
    return write_parquet(rows, folder, per_file=500)


@pytest.mark.slow  # 18 s of subprocess; the in-process stop test below keeps the resume in the default suite
def test_killed_build_resumes_row_for_row(tmp_path):
    source = _big_source(tmp_path / "big")
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "diffalign", "build", "pick-a-pic", str(source), "--out", str(out),
               "--shard-size", "25", "--no-progress"]
    proc = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    progress = out / ".progress.json"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if progress.exists() and len(json.loads(progress.read_text())["shards"]) >= 4:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "the build finished before it could be killed"
    done_before = json.loads(progress.read_text())["position"]
    assert 0 < done_before < 4000
    with pytest.raises(Exception, match="interrupted build"):
        PreferenceDataset.open(out)

    subprocess.run(command, check=True)
    resumed = _rows(out)
    build_pick_a_pic([str(source)], tmp_path / "straight", shard_size=25, progress=False)
    straight = _rows(tmp_path / "straight")
    assert len(resumed) == 4000
    assert resumed == straight
    assert json.loads((out / "manifest.json").read_text())["counts"] == json.loads(
        (tmp_path / "straight" / "manifest.json").read_text())["counts"]


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_keeps_the_rows_so_far_and_the_build_continues(signum, code, pick_source, tmp_path, monkeypatch,
                                                                      capsys):
    """The signal arrives while row 6 is read: rows up to it are written as a shard, the build
    exits 128 + the signal, and the same command then finishes it with exactly the rows of an
    uninterrupted build."""
    from diffalign.builders import pick_a_pic
    from diffalign.cli import main

    original = pick_a_pic.convert

    def signalled(raw, index, keep_ties=False):
        if index == 6:
            signal.raise_signal(signum)
        return original(raw, index, keep_ties)

    out = tmp_path / "out"
    command = ["build", "pick-a-pic", str(pick_source), "--out", str(out), "--shard-size", "4", "--no-progress"]
    monkeypatch.setattr(pick_a_pic, "convert", signalled)
    assert main(command) == code
    err = capsys.readouterr().err
    assert f"stopped by {signal.Signals(signum).name}: 3 rows in 1 shards kept in {out}" in err
    assert "run the same command again" in err and "Traceback" not in err
    progress = json.loads((out / ".progress.json").read_text())
    assert progress["position"] == 7 and [s["rows"] for s in progress["shards"]] == [3]

    monkeypatch.setattr(pick_a_pic, "convert", original)
    assert main(command) == 0
    build_pick_a_pic([str(pick_source)], tmp_path / "straight", shard_size=4, progress=False)
    assert _rows(out) == _rows(tmp_path / "straight")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == json.loads((tmp_path / "straight" / "manifest.json").read_text())["counts"]


def test_a_file_that_is_not_parquet_is_named(pick_source, tmp_path, capsys):
    from diffalign.cli import main

    (pick_source / "train-00001.parquet").write_bytes(b"<html>rate limited</html>")
    assert main(["build", "pick-a-pic", str(pick_source), "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "train-00001.parquet is not a readable Parquet file" in err
    assert "Traceback" not in err
