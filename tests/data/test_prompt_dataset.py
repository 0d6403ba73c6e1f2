"""Prompt-only datasets (K = 0, online RL's data) in the preference format: written, opened and
loaded; the rows' ``meta`` reaches every batch as ``metas``."""

import io
import json

import datasets
import pytest
from PIL import Image

from diffalign.data import GroupDataset, PreferenceDataset, SchemaError, collate_groups
from diffalign.data.schema import check_row, dataset_card, is_prompt_dataset, parse_meta
from diffalign.data.writer import ShardWriter
from diffalign.testing import write_prompt_dataset


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 0)).save(buf, "PNG")
    return buf.getvalue()


def _prompt_row(i, **extra):
    return {"id": f"p{i}", "prompt": f"a cat {i}", "images": [], "scores": None, "ranks": None, "captions": None,
            "source": "test", "meta": None, **extra}


def test_the_helper_round_trips_prompts_metas_and_the_manifest(tmp_path):
    folder = write_prompt_dataset(tmp_path / "prompts", ["a red cat", "two dogs"], [{"tag": "colors"}, {"n": 2}])
    data = PreferenceDataset.open(folder)
    assert (len(data), data.group_size, data.prompts_only) == (2, 0, True)
    assert data.manifest["kind"] == "prompts" and data.manifest["group_size"] == 0
    assert data[1] == {"id": "p1", "prompt": "two dogs", "images": [], "scores": None, "ranks": None,
                       "captions": None, "source": "testing", "meta": '{"n": 2}'}
    card = (folder / "README.md").read_text()
    assert "# Prompt-only dataset" in card and "prompt-only" in card and "- images per row (K): 0" in card
    # `datasets` reads it too (the card's configs point at data/).
    assert datasets.load_dataset(str(folder), split="train")["prompt"] == ["a red cat", "two dogs"]


def test_items_have_no_pixels_and_the_batch_carries_the_metas(tmp_path):
    folder = write_prompt_dataset(tmp_path / "prompts", ["a", "b", "c"], [{"tag": "x"}, {"tag": "y"}, {"tag": "z"}])
    groups = GroupDataset(folder, resolution=8)
    assert groups[2] == {"index": 2, "id": "p2", "prompt": "c", "captions": None, "scores": None, "ranks": None,
                         "meta": {"tag": "z"}}
    batch = collate_groups([groups[2], None, groups[0]])
    assert batch == {"indices": [2, 0], "ids": ["p2", "p0"], "prompts": ["c", "a"], "captions": [None, None],
                     "metas": [{"tag": "z"}, {"tag": "x"}], "skipped": 1, "scores": None, "ranks": None}


def test_a_prompt_dataset_refuses_a_latent_cache(tmp_path):
    folder = write_prompt_dataset(tmp_path / "prompts", ["a"])
    with pytest.raises(ValueError, match=r"prompts only \(K = 0\).*data.cache: false or auto"):
        GroupDataset(folder, resolution=8, cache=object())


def test_preference_items_carry_their_meta_into_metas(tmp_path):
    writer = ShardWriter(tmp_path / "pairs", builder="test", options={})
    for i, meta in enumerate([json.dumps({"user": 7}), None]):
        writer.add({**_prompt_row(i), "images": [{"bytes": _png(), "path": None}] * 2, "meta": meta})
        writer.advance(i + 1)
    writer.finish({"group_size": 2})
    groups = GroupDataset(tmp_path / "pairs", resolution=8)
    batch = collate_groups([groups[0], groups[1]])
    assert batch["metas"] == [{"user": 7}, None]
    assert batch["pixels"].shape == (2, 2, 3, 8, 8)


def test_only_a_prompt_writer_takes_rows_without_images(tmp_path):
    with pytest.raises(SchemaError, match="needs at least 1 image, got none.*diffalign build prompts"):
        ShardWriter(tmp_path / "pairs", builder="test", options={}).add(_prompt_row(0))
    writer = ShardWriter(tmp_path / "prompts", builder="test", options={}, prompts_only=True)
    with pytest.raises(SchemaError, match="holds no images, got 1"):
        writer.add({**_prompt_row(0), "images": [{"bytes": _png(), "path": None}]})
    with pytest.raises(SchemaError, match="has no 'scores'"):
        writer.add({**_prompt_row(0), "scores": []})
    writer.add(_prompt_row(0))
    # The writer, not the builder, marks the manifest: a builder's own extras cannot unmark it.
    manifest = writer.finish({"group_size": 2})
    assert (manifest["kind"], manifest["group_size"]) == ("prompts", 0)


def test_check_row_without_a_writer():
    check_row(_prompt_row(0), prompts_only=True)
    with pytest.raises(SchemaError, match="row 'p0': a row needs at least 1 image"):
        check_row(_prompt_row(0))


@pytest.mark.parametrize("manifest", [{"kind": "prompts", "group_size": 2}, {"group_size": 0}])
def test_a_manifest_with_kind_and_group_size_disagreeing_is_refused(tmp_path, manifest):
    assert is_prompt_dataset({"kind": "prompts", "group_size": 0}) is True
    assert is_prompt_dataset({"group_size": 2}) is False
    folder = write_prompt_dataset(tmp_path / "prompts", ["a"])
    written = json.loads((folder / "manifest.json").read_text())
    written.pop("kind")
    written.update(manifest)
    (folder / "manifest.json").write_text(json.dumps(written))
    with pytest.raises(SchemaError, match="prompt-only dataset has both kind 'prompts' and group_size 0"):
        PreferenceDataset.open(folder)


def test_meta_must_be_a_json_object_or_null():
    assert parse_meta(None, "r") is None
    assert parse_meta('{"a": [1, 2]}', "r") == {"a": [1, 2]}
    with pytest.raises(SchemaError, match="row 'r': meta is not JSON"):
        parse_meta("user 7", "r")
    with pytest.raises(SchemaError, match="row 'r': meta holds a JSON list, not an object"):
        parse_meta("[1]", "r")


def test_the_card_of_other_datasets_is_unchanged():
    assert "Rows are groups of images, best first." in dataset_card({"group_size": 2})
    assert "# Preference dataset (b)" in dataset_card({"group_size": 1, "builder": "b"})
    assert "(K = 1)" in dataset_card({"group_size": 1})
