"""The group loader, the reader's schema check, and the writer's atomicity."""

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from pickapic_source import jpeg
from PIL import Image

from diffalign.data import GroupDataset, PreferenceDataset, SchemaError, collate_groups
from diffalign.data.loader import UnreadableImageError, loader_workers
from diffalign.data.writer import ShardWriter


def _write(folder, rows, shard_size=100):
    writer = ShardWriter(folder, builder="test", options={}, shard_size=shard_size)
    for i, row in enumerate(rows):
        writer.add(row)
        writer.advance(i + 1)
    writer.finish({"group_size": len(rows[0]["images"])})
    return folder


def _row(i, images, **extra):
    return {"id": str(i), "prompt": f"p{i}", "images": [{"bytes": b, "path": None} for b in images],
            "scores": None, "ranks": None, "captions": None, "source": "test", "meta": None, **extra}


def _pixel(pixels, y=0, x=0):
    """RGB of one pixel of a [3, H, W] tensor in [-1, 1], as 0..255."""
    return ((pixels[:, y, x] + 1) * 127.5).round().tolist()


def test_items_are_best_first_resized_and_cropped(tmp_path):
    red, blue = jpeg((255, 0, 0), (32, 48)), jpeg((0, 0, 255), (32, 48))  # width 32, height 48
    data = _write(tmp_path / "d", [_row(0, [red, blue], scores=[2.0, 1.0], ranks=[0, 1])])
    item = GroupDataset(data, resolution=16)[0]
    assert item["pixels"].shape == (2, 3, 16, 16)
    assert -1 <= item["pixels"].min() and item["pixels"].max() <= 1
    assert _pixel(item["pixels"][0])[0] > 240 and _pixel(item["pixels"][1])[2] > 240
    # 32×48 → shorter side 16 → 16×24 (w×h); centre crop of 16 rows from 24: top = 4.
    assert item["original_size"].tolist() == [[48, 32], [48, 32]]
    assert item["crop_top_left"].tolist() == [[4, 0], [4, 0]]
    assert item["captions"] is None  # as stored: which text conditions each image is image_texts' call
    assert item["scores"].tolist() == [2.0, 1.0] and item["ranks"].tolist() == [0, 1]


def test_image_texts_decides_which_text_conditions_each_image():
    from diffalign.data.schema import SchemaError, image_texts

    assert image_texts("a cat", ["a big cat", "a small cat"], 2, per_image=True) == ["a big cat", "a small cat"]
    assert image_texts("a cat", ["a big cat", "a small cat"], 2, per_image=False) == ["a cat", "a cat"]
    assert image_texts("a cat", None, 3, per_image=False) == ["a cat"] * 3
    with pytest.raises(SchemaError, match="dual-captions"):
        image_texts("a cat", None, 2, per_image=True)


def test_random_crop_and_flip_are_shared_by_the_group_and_seeded(tmp_path):
    buf = io.BytesIO()
    gradient = Image.linear_gradient("L").resize((64, 32)).convert("RGB")  # width 64, varies along y
    gradient.transpose(Image.Transpose.ROTATE_90).save(buf, "PNG")       # now varies along x
    image = buf.getvalue()
    data = _write(tmp_path / "d", [_row(i, [image, image]) for i in range(8)])
    plain = GroupDataset(data, resolution=16, center_crop=False, random_flip=True, seed=3)
    items = [plain[i] for i in range(8)]
    for item in items:
        assert torch.equal(item["pixels"][0], item["pixels"][1])
        assert item["crop_top_left"][0].tolist() == item["crop_top_left"][1].tolist()
    assert len({tuple(it["crop_top_left"][0].tolist()) for it in items}) > 1
    flips = [bool(it["pixels"][0, 0, 0, 0] > it["pixels"][0, 0, 0, -1]) for it in items]
    assert any(flips) and not all(flips)
    again = GroupDataset(data, resolution=16, center_crop=False, random_flip=True, seed=3)
    assert all(torch.equal(again[i]["pixels"], items[i]["pixels"]) for i in range(8))


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    good = jpeg((0, 255, 0))
    data = _write(tmp_path / "d", [_row(0, [good, good]), _row(1, [good, b"garbage"]), _row(2, [good, good])])
    groups = GroupDataset(data, resolution=16)
    batch = collate_groups([groups[i] for i in range(3)])
    assert batch["skipped"] == 1 and batch["ids"] == ["0", "2"]
    assert batch["pixels"].shape == (2, 2, 3, 16, 16)
    assert batch["original_size"].shape == (2, 2, 2)
    assert batch["scores"] is None
    with pytest.raises(UnreadableImageError, match="row '1'"):
        GroupDataset(data, resolution=16, strict=True)[1]


def test_per_image_captions(tmp_path):
    img = jpeg((9, 9, 9))
    data = _write(tmp_path / "d", [_row(0, [img, img], captions=["a sharp cat", "a blurry cat"])])
    assert collate_groups([GroupDataset(data, resolution=8)[0]])["captions"] == [["a sharp cat", "a blurry cat"]]


def test_ranked_groups(tmp_path):
    imgs = [jpeg((c, c, c)) for c in (0, 80, 160, 240)]
    data = _write(tmp_path / "d", [_row(i, imgs, ranks=[0, 1, 2, 3]) for i in range(3)])
    batch = collate_groups([GroupDataset(data, resolution=8)[i] for i in range(3)])
    assert batch["pixels"].shape == (3, 4, 3, 8, 8) and batch["ranks"].shape == (3, 4)


def test_schema_check_names_the_column(tmp_path):
    img = jpeg((1, 1, 1))
    data = _write(tmp_path / "d", [_row(0, [img, img])])
    shard = data / "data" / "shard-00000.parquet"
    table = pq.read_table(shard)
    pq.write_table(table.drop(["prompt"]), shard)
    with pytest.raises(SchemaError, match=r"shard-00000.parquet .*missing column 'prompt'"):
        PreferenceDataset.open(data)
    table = table.set_column(table.schema.get_field_index("ranks"), "ranks", pa.array([["first", "second"]]))
    pq.write_table(table, shard)
    with pytest.raises(SchemaError, match=r"column 'ranks' is list<.*string>, expected list<.*int32>"):
        PreferenceDataset.open(data)


def test_rows_are_checked_before_writing(tmp_path):
    writer = ShardWriter(tmp_path / "d", builder="test", options={})
    with pytest.raises(SchemaError, match="at least 1 image"):
        writer.add(_row(0, []))
    with pytest.raises(SchemaError, match="'captions' has 1 entries for 2 images"):
        writer.add(_row(0, [b"a", b"b"], captions=["only one"]))


def test_no_half_written_shard_is_read(tmp_path):
    img = jpeg((1, 1, 1))
    writer = ShardWriter(tmp_path / "d", builder="test", options={"x": 1}, shard_size=1)
    writer.add(_row(0, [img, img]))
    writer.advance(1)  # shard 0 written and recorded
    # A kill while writing shard 1 leaves a temp file, and a kill just after its rename leaves
    # an unrecorded shard: neither may survive the resume.
    (tmp_path / "d" / "data" / ".shard-00001.parquet.tmp").write_bytes(b"half")
    (tmp_path / "d" / "data" / "shard-00001.parquet").write_bytes(b"unrecorded")
    resumed = ShardWriter(tmp_path / "d", builder="test", options={"x": 1}, shard_size=1)
    assert resumed.position == 1 and resumed.kept == 1
    assert sorted(p.name for p in (tmp_path / "d" / "data").iterdir()) == ["shard-00000.parquet"]
    with pytest.raises(SchemaError, match="interrupted build"):
        PreferenceDataset.open(tmp_path / "d")


def test_dataloader_workers_give_the_same_batches(tmp_path):
    from torch.utils.data import DataLoader

    imgs = [jpeg((c, 0, 0)) for c in (0, 250)]
    data = _write(tmp_path / "d", [_row(i, imgs) for i in range(5)], shard_size=2)
    groups = GroupDataset(data, resolution=8, center_crop=False, random_flip=True, seed=1)
    inline = list(DataLoader(groups, batch_size=2, collate_fn=collate_groups))
    workers = list(DataLoader(groups, batch_size=2, collate_fn=collate_groups, num_workers=2))
    assert [b["ids"] for b in workers] == [["0", "1"], ["2", "3"], ["4"]]
    for a, b in zip(inline, workers):
        assert torch.equal(a["pixels"], b["pixels"]) and torch.equal(a["crop_top_left"], b["crop_top_left"])


def test_loader_workers_default_to_none_on_cpu_and_some_on_gpu(monkeypatch):
    assert loader_workers(3) == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert loader_workers(None) == 0  # the model already uses every core
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert loader_workers(None) == 4
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert loader_workers(None) == 2
    with pytest.raises(ValueError, match="data.workers must be 0 or more"):
        loader_workers(-1)
