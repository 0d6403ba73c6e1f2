"""``diffalign build prompts``: prompt-only train/eval datasets (K = 0) from a prompt file, a Parquet
column, GenEval's generator or a preference dataset, split by a hash of each row id."""

import json
import signal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from diffalign.builders import prompts as prompts_builder
from diffalign.builders.prompts import (
    build_prompts,
    eval_share,
    prompt_row_id,
    split_of,
)
from diffalign.cli import main
from diffalign.data import GroupDataset, PreferenceDataset, SchemaError, collate_groups
from diffalign.data.writer import BuildError, ShardWriter
from diffalign.outputs import OutputError
from diffalign.testing import write_prompt_dataset


def _rows(folder):
    return list(PreferenceDataset.open(folder))


def _split_prompts(out):
    return {name: [r["prompt"] for r in _rows(Path(out) / name)] for name in ("train", "eval")}


def _write_txt(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------- ids and the split
def test_ids_and_shares_are_the_hand_computed_hashes():
    # sha256("0\na red cat") = e0a20d358e2c8e9d...; sha256("row-0") = 3c831eb5a23962a5...
    assert prompt_row_id("a red cat", 0) == "e0a20d358e2c8e9d"
    assert prompt_row_id("a red cat", 1) != prompt_row_id("a red cat", 0)
    assert eval_share("row-0") == 0x3C831EB5A23962A5 / 2**64


def test_the_split_of_a_fixed_id_list():
    # eval_share: row-0 .236, row-1 .060, row-2 .271, row-3 .463, row-4 .026, row-5 .354, row-6 .631, row-7 .322
    ids = [f"row-{i}" for i in range(8)]
    assert [split_of(i, 0.3) for i in ids] == ["eval", "eval", "eval", "train", "eval", "train", "train", "train"]
    assert [split_of(i, 0.0) for i in ids] == ["train"] * 8
    assert [split_of(i, 0.05) for i in ids] == ["train"] * 4 + ["eval"] + ["train"] * 3


def test_adding_prompts_moves_no_row_between_splits(tmp_path):
    old = [f"a photo of thing {i}" for i in range(40)]
    build_prompts(_write_txt(tmp_path / "old.txt", old), tmp_path / "old", eval_fraction=0.3)
    new = ["a new first prompt"] + old[:20] + [f"another {i}" for i in range(30)] + old[20:]
    build_prompts(_write_txt(tmp_path / "new.txt", new), tmp_path / "new", eval_fraction=0.3)
    before, after = _split_prompts(tmp_path / "old"), _split_prompts(tmp_path / "new")
    for name in ("train", "eval"):
        assert set(before[name]) <= set(after[name])
    assert before["eval"] and before["train"]  # both splits hold some of the old prompts: the check means something
    assert sorted(before["train"] + before["eval"]) == sorted(old)


# ----------------------------------------------------------------------------- sources
def test_a_text_file_keeps_repeats_with_their_own_ids_unless_dedup(tmp_path):
    source = _write_txt(tmp_path / "p.txt", ["a red cat", "a blue dog", "", "  a red cat  "])
    build_prompts(source, tmp_path / "all", eval_fraction=0)
    rows = _rows(tmp_path / "all" / "train")
    assert [(r["id"], r["prompt"]) for r in rows] == [
        (prompt_row_id("a red cat", 0), "a red cat"), (prompt_row_id("a blue dog", 0), "a blue dog"),
        (prompt_row_id("a red cat", 1), "a red cat")]
    assert rows[0] == {"id": "e0a20d358e2c8e9d", "prompt": "a red cat", "images": [], "scores": None, "ranks": None,
                       "captions": None, "source": "prompt-file", "meta": None}
    assert _rows(tmp_path / "all" / "eval") == []
    manifests = build_prompts(source, tmp_path / "dedup", eval_fraction=0, dedup=True)
    assert [r["prompt"] for r in _rows(tmp_path / "dedup" / "train")] == ["a red cat", "a blue dog"]
    assert manifests["train"]["prompts"]["repeats_dropped"] == 1
    for name in ("train", "eval"):
        data = PreferenceDataset.open(tmp_path / "dedup" / name)
        assert (data.group_size, data.prompts_only, data.manifest["split"]) == (0, True, name)


def test_a_parquet_column(tmp_path):
    table = pa.table({"image": [b"\x89PNG", b"", b""], "caption": ["x", "y", "z"], "Text": ["one", "two", "three"]})
    pq.write_table(table, tmp_path / "source.parquet")
    build_prompts(tmp_path / "source.parquet", tmp_path / "out", column="Text", eval_fraction=0)
    assert _split_prompts(tmp_path / "out") == {"train": ["one", "two", "three"], "eval": []}


def test_geneval_gives_553_prompts_each_with_its_metadata(tmp_path):
    manifests = build_prompts("geneval", tmp_path / "geneval")
    train, evaluation = _rows(tmp_path / "geneval" / "train"), _rows(tmp_path / "geneval" / "eval")
    assert len(train) + len(evaluation) == 553 == manifests["train"]["prompts"]["prompts"]
    assert 0 < len(evaluation) < 553 * 0.2  # about a tenth
    # Worked out by hand from GenEval's counting rule: "two backpacks" includes 2 of the class and
    # excludes 3 (exactly two); the record is stored whole, as the rules read it.
    row = next(r for r in train + evaluation if r["prompt"] == "a photo of two backpacks")
    assert json.loads(row["meta"]) == {"tag": "counting", "include": [{"class": "backpack", "count": 2}],
                                       "exclude": [{"class": "backpack", "count": 3}],
                                       "prompt": "a photo of two backpacks"}
    assert (row["id"], row["source"]) == (prompt_row_id("a photo of two backpacks", 0), "geneval")
    assert all(json.loads(r["meta"])["prompt"] == r["prompt"] for r in train + evaluation)


def test_geneval_metas_reach_the_batch_and_the_rules_read_them(tmp_path):
    from diffalign.evaluation.geneval_rules import Detection, evaluate_image

    build_prompts("geneval", tmp_path / "geneval", eval_fraction=0)
    groups = GroupDataset(tmp_path / "geneval" / "train", resolution=8)
    index = [r["prompt"] for r in _rows(tmp_path / "geneval" / "train")].index("a photo of two backpacks")
    meta = collate_groups([groups[index]])["metas"][0]
    two = {"backpack": [Detection("backpack", (0, 0, 5, 5), 0.95), Detection("backpack", (10, 0, 15, 5), 0.95)]}
    three = {"backpack": two["backpack"] + [Detection("backpack", (20, 0, 25, 5), 0.95)]}
    assert evaluate_image(None, two, meta)[0] is True
    assert evaluate_image(None, three, meta) == (False, "expected backpack<3, found 3")  # its exclude, read


def test_a_preference_dataset_gives_its_distinct_prompts(tmp_path):
    writer = ShardWriter(tmp_path / "pairs", builder="test", options={})
    png = {"bytes": b"\x89PNG", "path": None}
    for i, (prompt, meta) in enumerate([("a cat", {"user": 1}), ("a dog", None), ("a cat ", {"user": 3}), ("", None)]):
        writer.add({"id": f"r{i}", "prompt": prompt, "images": [png, png], "scores": None, "ranks": None,
                    "captions": None, "source": "pick-a-pic", "meta": None if meta is None else json.dumps(meta)})
        writer.advance(i + 1)
    writer.finish({"group_size": 2})
    manifests = build_prompts(tmp_path / "pairs", tmp_path / "out", eval_fraction=0)
    rows = _rows(tmp_path / "out" / "train")
    assert [(r["id"], r["prompt"], r["meta"], r["source"]) for r in rows] == [
        ("r0", "a cat", '{"user": 1}', "pick-a-pic"), ("r1", "a dog", None, "pick-a-pic")]
    assert manifests["train"]["prompts"]["source_kind"] == "dataset"
    assert manifests["train"]["prompts"]["repeats_dropped"] == 1


def test_a_prompt_dataset_is_a_source_too(tmp_path):
    write_prompt_dataset(tmp_path / "given", ["a", "b"], [{"k": 1}, {"k": 2}])
    build_prompts(tmp_path / "given", tmp_path / "out", eval_fraction=0)
    assert [(r["id"], r["meta"]) for r in _rows(tmp_path / "out" / "train")] == [("p0", '{"k": 1}'), ("p1", '{"k": 2}')]


# ----------------------------------------------------------------------------- refusals and resumption
def test_refusals(tmp_path):
    source = _write_txt(tmp_path / "p.txt", ["a", "b"])
    with pytest.raises(BuildError, match=r"--eval-fraction must be in \[0, 1\)"):
        build_prompts(source, tmp_path / "out", eval_fraction=1.0)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="holds notes.txt, which this command did not write"):
        build_prompts(source, tmp_path / "busy")
    write_prompt_dataset(tmp_path / "foreign" / "train", ["x"])  # another builder's dataset where train/ goes
    with pytest.raises(BuildError, match="already holds another dataset"):
        build_prompts(source, tmp_path / "foreign", overwrite=True)
    assert not (tmp_path / "foreign" / "eval").exists()  # refused before either split was written
    with pytest.raises(OutputError, match="lies inside the input --source"):
        build_prompts(tmp_path / "foreign" / "train", tmp_path / "foreign" / "train" / "out")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_a_changed_source_is_refused_on_resume_and_rebuilt_with_overwrite(tmp_path):
    source = _write_txt(tmp_path / "p.txt", ["a", "b"])
    build_prompts(source, tmp_path / "out", eval_fraction=0)
    _write_txt(source, ["a", "c"])
    with pytest.raises(BuildError, match="other options"):
        build_prompts(source, tmp_path / "out", eval_fraction=0)
    build_prompts(source, tmp_path / "out", eval_fraction=0, overwrite=True)
    assert _split_prompts(tmp_path / "out")["train"] == ["a", "c"]


def test_a_stopped_build_leaves_no_finished_looking_train_and_continues(tmp_path, monkeypatch, capsys):
    """SIGTERM while the third train row is added (shards of 1): eval is finished, train is not
    (no manifest: opening it says the build was interrupted); the same command finishes it."""
    lines = [f"prompt {i}" for i in range(12)]
    source = _write_txt(tmp_path / "p.txt", lines)
    command = ["build", "prompts", "--source", str(source), "--out", str(tmp_path / "out"), "--eval-fraction", "0.3",
               "--shard-size", "1"]
    build_prompts(source, tmp_path / "straight", eval_fraction=0.3, shard_size=1)
    third = _rows(tmp_path / "straight" / "train")[2]["id"]

    class Stopping(ShardWriter):
        def add(self, row):
            if row["id"] == third:
                signal.raise_signal(signal.SIGTERM)
            super().add(row)

    monkeypatch.setattr(prompts_builder, "ShardWriter", Stopping)
    assert main(command) == 143
    assert "stopped by SIGTERM" in capsys.readouterr().err
    assert PreferenceDataset.open(tmp_path / "out" / "eval")
    with pytest.raises(SchemaError, match="an interrupted build"):
        PreferenceDataset.open(tmp_path / "out" / "train")
    monkeypatch.setattr(prompts_builder, "ShardWriter", ShardWriter)
    assert main(command) == 0
    assert _split_prompts(tmp_path / "out") == _split_prompts(tmp_path / "straight")
    assert sum(len(v) for v in _split_prompts(tmp_path / "out").values()) == 12


# ----------------------------------------------------------------------------- command line
def test_command_line_and_script(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["build", "prompts", "--help"])
    assert exited.value.code == 0
    usage = capsys.readouterr().out
    assert all(option in usage for option in ("--source SOURCE", "--eval-fraction", "--dedup", "--column", "--out"))
    source = _write_txt(tmp_path / "p.txt", ["a red cat", "a blue dog", "a red cat"])
    assert main(["build", "prompts", "--source", str(source), "--out", str(tmp_path / "cli"), "--dedup",
                 "--eval-fraction", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote 2 prompts to {tmp_path / 'cli' / 'train'} and 0 to {tmp_path / 'cli' / 'eval'}")
    assert "1 repeated prompts dropped" in out
    assert main(["build", "prompts", "--source", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "x")]) == 1
    assert capsys.readouterr().err.startswith("error: ")
    script = Path(__file__).resolve().parents[2] / "datasets_builders" / "prompts.py"
    assert '"build", "prompts"' in script.read_text()
