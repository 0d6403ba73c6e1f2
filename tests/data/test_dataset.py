"""Image paths in a dataset stay inside its folder: absolute paths, ``..`` and links out are
refused and never opened; the row is skipped and counted, or an error under ``strict``."""

import io
import os

import pytest
from PIL import Image

from diffalign.data import GroupDataset, PreferenceDataset, collate_groups
from diffalign.data.loader import UnreadableImageError
from diffalign.data.schema import SchemaError, UnsafeImagePathError, check_row
from diffalign.testing import write_handmade_dataset


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def layout(tmp_path):
    """``secret.png`` outside the dataset folder, ``images/ok.png`` inside, ``images/link.png`` a
    symbolic link from inside to the secret."""
    (tmp_path / "secret.png").write_bytes(_png((255, 0, 0)))
    root = tmp_path / "prefs"
    (root / "images").mkdir(parents=True)
    (root / "images" / "ok.png").write_bytes(_png((0, 0, 255)))
    os.symlink(tmp_path / "secret.png", root / "images" / "link.png")
    return root


ESCAPES = ["../secret.png", "images/../../secret.png", "/etc/passwd", "images/link.png"]


def _rows(escape: str) -> list[dict]:
    ok = {"bytes": None, "path": "images/ok.png"}
    return [{"id": "good", "prompt": "a blue square", "images": [ok, ok]},
            {"id": "bad", "prompt": "a red square", "images": [ok, {"bytes": None, "path": escape}]}]


@pytest.mark.parametrize("escape", ESCAPES)
def test_paths_out_of_the_folder_are_never_opened(layout, escape, monkeypatch):
    data = PreferenceDataset.open(write_handmade_dataset(layout, _rows(escape)))
    opened = []
    real_open = io.open

    def watching_open(file, *args, **kwargs):
        opened.append(os.path.realpath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", watching_open)  # what pathlib's read_bytes calls
    monkeypatch.setattr("builtins.open", watching_open)
    assert data.image_bytes(data[0]["images"][0]) == _png((0, 0, 255))
    assert opened and opened[-1].endswith("ok.png")  # the watch sees reads
    with pytest.raises(UnsafeImagePathError, match="outside|not inside"):
        data.image_bytes(data[1]["images"][1])
    assert not any(p.endswith(("secret.png", "passwd")) for p in opened)


@pytest.mark.parametrize("escape", ESCAPES)
def test_the_loader_skips_and_counts_the_row_or_raises_under_strict(layout, escape):
    root = write_handmade_dataset(layout, _rows(escape))
    groups = GroupDataset(root, resolution=32)
    batch = collate_groups([groups[0], groups[1]])
    assert batch["ids"] == ["good"] and batch["skipped"] == 1  # the red secret is never trained on
    with pytest.raises(UnreadableImageError, match="row 'bad'.*outside|row 'bad'.*not inside"):
        GroupDataset(root, resolution=32, strict=True)[1]


def test_builders_refuse_to_write_such_paths():
    row = {"id": "r", "prompt": "p", "source": "s", "images": [{"bytes": None, "path": "a.png"},
                                                                {"bytes": None, "path": "../b.png"}]}
    with pytest.raises(UnsafeImagePathError):
        check_row(row)
    row["images"][1]["path"] = "C:\\data\\b.png"
    with pytest.raises(UnsafeImagePathError):
        check_row(row)
    row["images"][1]["path"] = "sub/b.png"
    check_row(row)


def test_a_damaged_shard_is_a_schema_error(layout):
    root = write_handmade_dataset(layout, _rows("images/ok.png"))
    (root / "data" / "shard-00000.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(SchemaError, match="is not a readable Parquet file"):
        PreferenceDataset.open(root)
