"""Tiny preference datasets for the trainer tests: pairs with per-image captions, and ranked
groups of three."""

import io

import pytest
from PIL import Image

from diffalign.data.writer import ShardWriter


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, "PNG")
    return buf.getvalue()


def write_groups(folder, k: int, rows: int = 4, captions: bool = True):
    writer = ShardWriter(folder, builder="test", options={}, shard_size=3)
    for i in range(rows):
        images = [_png((60 * j + 10 * i, 255 - 60 * j, 40 * i)) for j in range(k)]
        writer.add({
            "id": f"g{i}", "prompt": f"a red cat {i}", "images": [{"bytes": b, "path": None} for b in images],
            "scores": [float(k - j) for j in range(k)], "ranks": list(range(k)),
            "captions": [f"a red cat {i}, version {j}" for j in range(k)] if captions else None,
            "source": "test", "meta": None,
        })
        writer.advance(i + 1)
    writer.finish({"group_size": k})
    return folder


@pytest.fixture(scope="session")
def pair_data(tmp_path_factory):
    return write_groups(tmp_path_factory.mktemp("pairs") / "prefs", k=2)


@pytest.fixture(scope="session")
def ranked_data(tmp_path_factory):
    return write_groups(tmp_path_factory.mktemp("ranked") / "prefs", k=3)


@pytest.fixture(scope="session")
def expert_data(tmp_path_factory):
    """One image per prompt (K = 1), as Diffusion-DRO takes."""
    return write_groups(tmp_path_factory.mktemp("experts") / "prefs", k=1, captions=False)


@pytest.fixture(scope="session")
def step_aware_model(tmp_path_factory):
    """A tiny step-aware preference model folder (random weights), as SPO's config names."""
    from diffalign.rewards.tiny import tiny_step_aware

    return tiny_step_aware(seed=0).save_pretrained(tmp_path_factory.mktemp("step_aware") / "spm")


@pytest.fixture(scope="session")
def plain_pair_data(tmp_path_factory):
    return write_groups(tmp_path_factory.mktemp("plain") / "prefs", k=2, captions=False)
