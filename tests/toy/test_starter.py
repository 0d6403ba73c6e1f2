"""A first run that works: `diffalign make-tiny` writes what the shipped tiny configs need, and
each of them then trains as shipped, from a fresh working folder."""

from pathlib import Path

import pytest

from diffalign.cli import main
from diffalign.data import PreferenceDataset

TINY_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "training" / "configs" / "tiny").rglob("*.yaml"))


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory):
    """A working folder where only `diffalign make-tiny` (the configs' first line) has run."""
    folder = tmp_path_factory.mktemp("clone")
    cwd = Path.cwd()
    import os

    os.chdir(folder)
    try:
        assert main(["make-tiny"]) == 0
    finally:
        os.chdir(cwd)
    return folder


def test_make_tiny_writes_the_model_and_both_datasets(fresh_clone):
    from diffalign.families import detect_family

    tiny = fresh_clone / "outputs" / "tiny"
    assert detect_family(tiny / "model").family == "sd"
    pairs, ranked = PreferenceDataset.open(tiny / "pairs"), PreferenceDataset.open(tiny / "ranked")
    assert pairs.group_size == 2 and ranked.group_size == 3 and len(pairs) == len(ranked) == 32
    row = ranked[0]
    assert row["scores"] == sorted(row["scores"], reverse=True) and row["scores"][0] > row["scores"][-1]
    assert all(c.split()[1] in ("large", "small") for c in pairs[0]["captions"])


def test_make_tiny_writes_the_video_model_and_pairs(fresh_clone):
    from diffalign.families import detect_family

    tiny = fresh_clone / "outputs" / "tiny"
    assert detect_family(tiny / "video_model").family == "wan"
    clips = PreferenceDataset.open(tiny / "video_pairs")
    assert clips.media == "video" and clips.group_size == 2 and len(clips) == 8
    assert clips[0]["images"][0]["bytes"][4:8] == b"ftyp"  # an MP4 container


@pytest.mark.parametrize("config", TINY_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_each_tiny_config_trains_as_shipped(config, fresh_clone, monkeypatch, capsys):
    monkeypatch.chdir(fresh_clone)
    assert main(["train", "--config", str(config)]) == 0
    assert "trained 3 steps; weights in outputs/tiny-" in capsys.readouterr().out
