"""``diffalign score`` on a folder of images and on a preference dataset writes the scores file."""

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from reward_images import png_bytes, smooth_images

from diffalign.cli import main
from diffalign.rewards import PickScore

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a red circle", "a photo of a cat", "a blue square", "a dog", "a green tree"]


@pytest.fixture
def folder(tmp_path):
    """Five PNGs, two in a subfolder, and a prompts.txt in sorted file order."""
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    names = ["a.png", "b.png", "c.png", "sub/d.png", "sub/e.png"]
    for name, image in zip(names, smooth_images(5)):
        image.save(images / name)
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return images


def _score(*argv) -> int:
    return main(["score", *map(str, argv), "--no-progress"])


def test_folder_to_parquet(folder, tiny_clip_dir, capsys):
    out = folder.parent / "scores.parquet"
    assert _score("--reward", "pickscore", "--model", tiny_clip_dir, "--images", folder,
                  "--prompts", folder.parent / "prompts.txt", "--out", out, "--batch-size", 2) == 0
    table = pq.read_table(out)
    assert table.column_names == ["image", "prompt", "pickscore"]
    assert table.column("image").to_pylist() == ["a.png", "b.png", "c.png", "sub/d.png", "sub/e.png"]
    assert table.column("prompt").to_pylist() == PROMPTS
    # Batches of 2 give what one call of the library gives for all five images.
    reward = PickScore.from_pretrained(tiny_clip_dir)
    expected = reward.score(smooth_images(5), PROMPTS)
    assert torch.allclose(torch.tensor(table.column("pickscore").to_pylist()), expected, atol=1e-5)
    meta = json.loads(table.schema.metadata[b"diffalign"])
    assert meta["rewards"]["pickscore"]["weights"] == str(tiny_clip_dir)
    assert meta["summary"]["pickscore"]["n"] == 5
    assert meta["summary"]["pickscore"]["mean"] == pytest.approx(expected.mean().item(), abs=1e-5)
    assert "scored 5 images" in capsys.readouterr().out


def test_json_output_one_prompt_and_an_unreadable_image(folder, tiny_clip_dir):
    (folder / "broken.png").write_bytes(b"not an image")
    out = folder.parent / "scores.json"
    assert _score("--reward", "clip_score", "--model", tiny_clip_dir, "--images", folder, "--prompt", "a cat",
                  "--out", out) == 0
    written = json.loads(out.read_text())
    label = f"clip_score[{tiny_clip_dir}]"
    assert len(written["scores"]) == 5 and written["skipped"] == ["broken.png"]
    assert all(row["prompt"] == "a cat" and row[label] >= 0 for row in written["scores"])
    assert _score("--reward", "clip_score", "--model", tiny_clip_dir, "--images", folder, "--prompt", "a cat",
                  "--out", out, "--strict") == 1


def test_prompts_from_metadata_jsonl(folder, tiny_clip_dir):
    names = ["a.png", "b.png", "c.png", "d.png", "sub/e.png"]
    lines = [{"file_name": name, "text": f"prompt {i}"} for i, name in enumerate(names)]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    out = folder.parent / "scores.parquet"
    assert _score("--reward", "pickscore", "--model", tiny_clip_dir, "--images", folder, "--out", out) == 0
    # "d.png" matches sub/d.png by its file name; sub/e.png by its relative path.
    assert pq.read_table(out).column("prompt").to_pylist() == [f"prompt {i}" for i in range(5)]


def test_several_rewards_give_several_columns(folder, tmp_path, tiny_rewards, monkeypatch):
    import diffalign.rewards as rewards

    monkeypatch.setattr(rewards, "load_reward", lambda name, path=None, **kw: tiny_rewards[name])
    out = tmp_path / "scores.parquet"
    assert _score("--reward", "hpsv2.1", "--reward", "aesthetic", "--images", folder,
                  "--prompts", folder.parent / "prompts.txt", "--out", out) == 0
    assert pq.read_table(out).column_names == ["image", "prompt", "hpsv2.1", "aesthetic_v2"]


def test_prompt_free_rewards_need_no_prompts(folder, tmp_path, tiny_rewards, monkeypatch):
    import diffalign.rewards as rewards

    monkeypatch.setattr(rewards, "load_reward", lambda name, path=None, **kw: tiny_rewards[name])
    assert _score("--reward", "aesthetic", "--images", folder, "--out", tmp_path / "s.json") == 0


def test_mistakes_exit_with_a_message(folder, tiny_clip_dir, tmp_path, capsys):
    prompts = tmp_path / "short.txt"
    prompts.write_text("one\ntwo\n")
    assert _score("--reward", "pickscore", "--model", tiny_clip_dir, "--images", folder, "--prompts", prompts,
                  "--out", tmp_path / "s.parquet") == 1
    assert "2 prompts for 5 images" in capsys.readouterr().err
    assert _score("--reward", "pickscore", "--model", tiny_clip_dir, "--images", folder, "--out", tmp_path / "s.parquet") == 1
    assert "--prompts" in capsys.readouterr().err
    assert _score("--reward", "pickscore", "--reward", "hpsv2", "--model", tiny_clip_dir, "--images", folder,
                  "--prompt", "x", "--out", tmp_path / "s.parquet") == 1
    assert "single --reward" in capsys.readouterr().err
    assert _score("--reward", "pickscore", "--images", tmp_path / "nowhere", "--prompt", "x", "--model", tiny_clip_dir,
                  "--out", tmp_path / "s.csv") == 1
    assert ".parquet or .json" in capsys.readouterr().err


def test_a_preference_dataset(tmp_path, tiny_clip_dir):
    from diffalign.data.writer import ShardWriter

    images = [png_bytes(im) for im in smooth_images(4)]
    writer = ShardWriter(tmp_path / "prefs", builder="test", options={})
    writer.add({"id": "r0", "prompt": "a cat", "images": [{"bytes": images[0], "path": None}, {"bytes": images[1], "path": None}],
                "scores": None, "ranks": None, "captions": None, "source": "test", "meta": None})
    writer.add({"id": "r1", "prompt": "a dog", "images": [{"bytes": images[2], "path": None}, {"bytes": images[3], "path": None}],
                "scores": None, "ranks": None, "captions": ["a dog, sharp", "a dog, blurry"], "source": "test", "meta": None})
    writer.advance(2)
    writer.finish()
    out = tmp_path / "scores.parquet"
    assert _score("--reward", "pickscore", "--model", tiny_clip_dir, "--images", tmp_path / "prefs", "--out", out) == 0
    table = pq.read_table(out)
    assert table.column("image").to_pylist() == ["r0/0", "r0/1", "r1/0", "r1/1"]
    assert table.column("prompt").to_pylist() == ["a cat", "a cat", "a dog, sharp", "a dog, blurry"]


@pytest.mark.parametrize("escape", ["../secret.png", "/tmp/../etc/passwd"])
def test_a_dataset_path_out_of_its_folder_is_skipped_not_scored(escape, tmp_path, tiny_clip_dir):
    from diffalign.testing import write_handmade_dataset

    images = [png_bytes(im) for im in smooth_images(2)]
    (tmp_path / "secret.png").write_bytes(images[1])
    (tmp_path / "prefs" / "images").mkdir(parents=True)
    (tmp_path / "prefs" / "images" / "ok.png").write_bytes(images[0])
    write_handmade_dataset(tmp_path / "prefs", [{"id": "r0", "prompt": "a cat", "images": [
        {"bytes": None, "path": "images/ok.png"}, {"bytes": None, "path": escape}]}])
    out = tmp_path / "scores.json"
    assert _score("--reward", "pickscore", "--model", tiny_clip_dir, "--images", tmp_path / "prefs", "--out", out) == 0
    written = json.loads(out.read_text())
    assert [row["image"] for row in written["scores"]] == ["r0/0"] and written["skipped"] == ["r0/1"]
    assert _score("--reward", "pickscore", "--model", tiny_clip_dir, "--images", tmp_path / "prefs", "--out", out,
                  "--strict") == 1


def test_the_runnable_script(folder, tiny_clip_dir, tmp_path, monkeypatch):
    """``python reward_models/score.py …`` runs it as ``__main__`` (in this process: a subprocess
    would spend most of the test importing torch again)."""
    import runpy

    out = tmp_path / "scores.json"
    script = ROOT / "reward_models" / "score.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--reward", "pickscore", "--model", str(tiny_clip_dir),
                                      "--images", str(folder), "--prompt", "a cat", "--out", str(out), "--no-progress"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(script), run_name="__main__")
    assert exited.value.code == 0
    assert len(json.loads(out.read_text())["scores"]) == 5


# ----------------------------------------------------------------------------- --into
def _tree(folder: Path) -> dict:
    """``relative path -> bytes`` of every file under ``folder`` (to show it is unchanged)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def source(tmp_path):
    """Five rows in three shards: bytes, captions + old scores, images stored as paths, a corrupt
    image (r3), and bytes again."""
    from diffalign.data.writer import ShardWriter

    images = [png_bytes(im) for im in smooth_images(8)]
    root = tmp_path / "prefs"
    # The writer first: it claims the folder (a build writes only into a new or empty one, or its own).
    writer = ShardWriter(root, builder="test-builder", options={"origin": "handmade"}, shard_size=2)
    (root / "images").mkdir(parents=True)
    (root / "images" / "e.png").write_bytes(images[4])
    (root / "images" / "f.png").write_bytes(images[5])

    def raw(i):
        return {"bytes": images[i], "path": None}

    rows = [
        {"id": "r0", "prompt": "a cat", "images": [raw(0), raw(1)], "scores": None, "ranks": [0, 1], "captions": None},
        {"id": "r1", "prompt": "a dog", "images": [raw(2), raw(3)], "scores": [1.0, 0.0], "ranks": [0, 1],
         "captions": ["a dog, sharp", "a dog, blurry"]},
        {"id": "r2", "prompt": "a tree", "images": [{"bytes": None, "path": "images/e.png"},
                                                     {"bytes": None, "path": "images/f.png"}],
         "scores": None, "ranks": [0, 0], "captions": None},
        {"id": "r3", "prompt": "a car", "images": [raw(6), {"bytes": b"not an image", "path": None}],
         "scores": None, "ranks": [0, 1], "captions": None},
        {"id": "r4", "prompt": "a house", "images": [raw(7), raw(0)], "scores": None, "ranks": [0, 1], "captions": None},
    ]
    for position, row in enumerate(rows):
        writer.add({**row, "source": "test", "meta": json.dumps({"n": position})})
        writer.advance(position + 1)
    writer.finish({"group_size": 2, "reward_models": [{"label": "old", "weight": 1.0}]})
    return root


def _into(source, out, model, *extra) -> int:
    return _score("--reward", "pickscore", "--model", model, "--images", source, "--into", out, *extra)


def test_into_writes_the_scores_into_a_new_dataset(source, tmp_path, tiny_clip_dir, capsys):
    from diffalign.data import PreferenceDataset

    before = _tree(source)
    out = tmp_path / "scored"
    assert _into(source, out, tiny_clip_dir, "--batch-size", 3, "--shard-size", 2) == 0
    said = capsys.readouterr().out
    assert "scored 8 images of 4 rows" in said and "1 row(s) with an unreadable image skipped" in said
    assert "1 row(s) had scores, replaced" in said
    assert _tree(source) == before  # the source is only read

    # The same images scored into a separate file (captions where the row has them).
    assert _score("--reward", "pickscore", "--model", tiny_clip_dir, "--images", source,
                  "--out", tmp_path / "s.parquet") == 0
    table = pq.read_table(tmp_path / "s.parquet")
    separate = dict(zip(table.column("image").to_pylist(), table.column("pickscore").to_pylist()))

    src = PreferenceDataset.open(source)
    src_rows = {row["id"]: row for row in src}
    scored = PreferenceDataset.open(out)  # what training opens
    rows = list(scored)
    assert [row["id"] for row in rows] == ["r0", "r1", "r2", "r4"]
    for row in rows:
        old = src_rows[row["id"]]
        assert len(row["scores"]) == len(row["images"]) == 2
        assert row["scores"] == pytest.approx([separate[f"{row['id']}/{k}"] for k in range(2)], abs=1e-5)
        assert row["scores"][0] != pytest.approx(row["scores"][1], abs=1e-3)  # so image order shows
        assert 0 < row["scores"][0] < 25  # the reward's own scale (exp(logit_scale) · cos), not [1, 0]
        for key in ("prompt", "ranks", "captions", "source", "meta"):
            assert row[key] == old[key], key
        assert [im["bytes"] for im in row["images"]] == [src.image_bytes(im) for im in old["images"]]
    manifest = scored.manifest
    assert manifest["builder"] == "score-into" and manifest["group_size"] == 2
    assert manifest["reward_models"] == [{"label": "pickscore", "name": "pickscore", "weights": str(tiny_clip_dir),
                                          "weight": 1.0}]
    assert manifest["scores_from"]["overwritten_rows"] == 1
    assert manifest["scores_from"]["previous_reward_models"] == [{"label": "old", "weight": 1.0}]
    assert manifest["source_dataset"]["builder"] == "test-builder"
    assert manifest["source_dataset"]["options"] == {"origin": "handmade"}
    assert manifest["counts"]["dropped"] == {"unreadable_image": 1} and manifest["skipped_rows"] == ["r3"]
    assert len(manifest["shards"]) == 2

    # Self-contained: readable with the source gone.
    import shutil

    from diffalign.data.images import decode

    shutil.rmtree(source)
    again = PreferenceDataset.open(out)
    assert all(decode(again.image_bytes(im)) for row in again for im in row["images"])
    assert all(row["scores"] is not None for row in again)


def test_into_strict_stops_at_an_unreadable_image(source, tmp_path, tiny_clip_dir, capsys):
    out = tmp_path / "scored"
    assert _into(source, out, tiny_clip_dir, "--strict") == 1
    assert "r3/1: unreadable image" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()


def test_into_refusals(source, folder, tmp_path, tiny_clip_dir, capsys):
    before = _tree(source)
    out = tmp_path / "scored"
    assert _score("--reward", "pickscore", "--reward", "hpsv2", "--images", source, "--into", out) == 1
    assert "exactly one --reward" in capsys.readouterr().err
    assert _into(folder, out, tiny_clip_dir) == 1
    err = capsys.readouterr().err
    assert "preference dataset" in err and "plain folder" in err and "--out" in err
    assert _into(source, source, tiny_clip_dir) == 1
    assert "--into" in (err := capsys.readouterr().err) and "is the input --images" in err
    assert _into(source, source, tiny_clip_dir, "--overwrite") == 1  # --overwrite never deletes the source
    assert _into(source, source / "scored", tiny_clip_dir) == 1
    assert "lies inside the input --images" in capsys.readouterr().err
    assert _into(source, tmp_path, tiny_clip_dir, "--overwrite") == 1
    assert "contains the input --images" in capsys.readouterr().err
    assert _tree(source) == before and not out.exists()

    from diffalign.testing import write_handmade_dataset

    other = write_handmade_dataset(tmp_path / "other", [{"id": "x", "prompt": "p", "images": [
        {"bytes": png_bytes(im), "path": None} for im in smooth_images(2)]}])
    other_before = _tree(other)
    assert _into(source, other, tiny_clip_dir) == 1
    assert "already holds another dataset" in capsys.readouterr().err and _tree(other) == other_before
    assert _into(source, folder, tiny_clip_dir) == 1  # a folder of images is not a place to write a dataset
    assert "not empty" in capsys.readouterr().err
    # A finished --into with other options is refused too, naming the fix.
    assert _into(source, out, tiny_clip_dir) == 0
    assert _into(source, out, tiny_clip_dir, "--shard-size", 3) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_into_resumes_after_an_interruption(source, tmp_path, tiny_clip_dir, monkeypatch):
    from diffalign.data import PreferenceDataset

    class Boom(Exception):
        pass

    original = PickScore.score
    calls = {"n": 0, "fail_at": 3}

    def score(self, images, prompts):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise Boom
        return original(self, images, prompts)

    monkeypatch.setattr(PickScore, "score", score)
    out = tmp_path / "scored"
    options = ("--batch-size", 2, "--shard-size", 1)  # one row per call and per shard
    with pytest.raises(Boom):
        _into(source, out, tiny_clip_dir, *options)
    progress = json.loads((out / ".progress.json").read_text())
    assert len(progress["shards"]) == 2 and not (out / "manifest.json").exists()

    calls.update(n=0, fail_at=None)
    assert _into(source, out, tiny_clip_dir, *options) == 0
    assert calls["n"] == 2  # r2, then r3 (skipped) with r4: the first two rows were not scored again
    calls.update(n=0)
    assert _into(source, tmp_path / "fresh", tiny_clip_dir, *options) == 0
    assert calls["n"] == 4

    resumed, fresh = PreferenceDataset.open(out), PreferenceDataset.open(tmp_path / "fresh")
    assert resumed.column("id") == fresh.column("id") == ["r0", "r1", "r2", "r4"]
    def flat(data):
        return [s for row in data.column("scores") for s in row]

    assert flat(resumed) == pytest.approx(flat(fresh), abs=1e-6)
    assert resumed.manifest["counts"] == fresh.manifest["counts"]
    assert resumed.manifest["skipped_rows"] == ["r3"]


# ----------------------------------------------------------------------------- videos
def _clip(seed: int, frames: int = 9, size: int = 32) -> torch.Tensor:
    """uint8 ``[F, 3, size, size]``: smooth colour fields that change from frame to frame."""
    coarse = torch.rand(frames, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    fields = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (fields * 255).round().to(torch.uint8)


@pytest.fixture
def video_folder(tmp_path):
    """Two 9-frame 32 × 32 MP4s (one in a subfolder) and a prompts.txt in sorted order."""
    from diffalign.data.videos import encode_video

    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    (videos / "a.mp4").write_bytes(encode_video(_clip(0)))
    (videos / "sub" / "b.mp4").write_bytes(encode_video(_clip(1)))
    (tmp_path / "video_prompts.txt").write_text("a red circle\na dog\n")
    return videos


def test_a_folder_of_videos_one_row_per_video(video_folder, tiny_clip_dir, capsys):
    from diffalign.data.videos import read_frames
    from diffalign.rewards import FrameAveraged

    out = video_folder.parent / "scores.parquet"
    assert _score("--reward", "pickscore", "--model", tiny_clip_dir, "--images", video_folder, "--frames", "every:4",
                  "--prompts", video_folder.parent / "video_prompts.txt", "--out", out, "--batch-size", 3) == 0
    table = pq.read_table(out)
    label = "pickscore@frames:every:4"
    assert table.column_names == ["video", "prompt", label]
    assert table.column("video").to_pylist() == ["a.mp4", "sub/b.mp4"]
    # Frames 0, 4, 8 of each decoded video, averaged: what the library gives.
    decoded = [read_frames(video_folder / name) for name in ("a.mp4", "sub/b.mp4")]
    expected = FrameAveraged(PickScore.from_pretrained(tiny_clip_dir), "every:4").score(decoded, ["a red circle", "a dog"])
    assert torch.allclose(torch.tensor(table.column(label).to_pylist()), expected, atol=1e-5)
    meta = json.loads(table.schema.metadata[b"diffalign"])
    assert meta["media"] == "video" and meta["rewards"][label] == {"name": "pickscore", "weights": str(tiny_clip_dir),
                                                                  "frames": "every:4"}
    assert "scored 2 videos (0 unreadable skipped)" in capsys.readouterr().out


def test_a_corrupt_video_is_skipped_and_counted(video_folder, tiny_clip_dir, capsys):
    (video_folder / "broken.mp4").write_bytes(b"not a video")
    out = video_folder.parent / "scores.json"
    assert _score("--reward", "clip_score", "--model", tiny_clip_dir, "--images", video_folder, "--prompt", "a cat",
                  "--frames", "first", "--out", out) == 0
    written = json.loads(out.read_text())
    assert [row["video"] for row in written["scores"]] == ["a.mp4", "sub/b.mp4"] and written["skipped"] == ["broken.mp4"]
    assert "1 unreadable skipped" in capsys.readouterr().out
    assert _score("--reward", "clip_score", "--model", tiny_clip_dir, "--images", video_folder, "--prompt", "a cat",
                  "--out", out, "--strict") == 1
    assert "broken.mp4: unreadable video" in capsys.readouterr().err


def test_temporal_consistency_of_videos_and_frame_folders(video_folder, tiny_clip_dir):
    from diffalign.data.videos import read_frames
    from diffalign.rewards import TemporalConsistency

    frames = video_folder / "frames"
    frames.mkdir()
    still = _clip(2, frames=1)[0].permute(1, 2, 0).numpy()
    for i in range(6):  # one still frame six times: a frame folder with nothing changing
        from PIL import Image

        Image.fromarray(still).save(frames / f"{i:05d}.png")
    out = video_folder.parent / "tc.json"
    assert _score("--reward", "temporal_consistency", "--model", tiny_clip_dir, "--images", video_folder,
                  "--max-frames", 5, "--out", out) == 0  # prompt-free: no prompts needed
    written = json.loads(out.read_text())
    label = f"temporal_consistency[{tiny_clip_dir}]"
    scores = {row["video"]: row[label] for row in written["scores"]}
    assert list(scores) == ["a.mp4", "frames", "sub/b.mp4"] and written["max_frames"] == 5
    assert scores["frames"] == pytest.approx(100.0, abs=1e-3)
    expected = TemporalConsistency.from_pretrained(tiny_clip_dir).score([read_frames(video_folder / "a.mp4")[:5]])
    assert scores["a.mp4"] == pytest.approx(expected.item(), abs=1e-4) and scores["a.mp4"] < 100.0 - 1e-3


def test_a_video_preference_dataset(tmp_path, tiny_clip_dir):
    from diffalign.data.videos import encode_video
    from diffalign.testing import write_handmade_dataset

    clips = [encode_video(_clip(seed, frames=3)) for seed in range(2)]
    root = write_handmade_dataset(tmp_path / "prefs", [{"id": "r0", "prompt": "a cat", "images": [
        {"bytes": clips[0], "path": None}, {"bytes": clips[1], "path": None}]}])
    manifest = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps({**manifest, "media": "video"}))
    out = tmp_path / "scores.json"
    assert _score("--reward", "pickscore", "--model", tiny_clip_dir, "--images", root, "--out", out) == 0
    rows = json.loads(out.read_text())["scores"]
    assert [(row["video"], row["prompt"]) for row in rows] == [("r0/0", "a cat"), ("r0/1", "a cat")]
    assert rows[0]["pickscore@frames:all"] != pytest.approx(rows[1]["pickscore@frames:all"], abs=1e-4)
    assert _score("--reward", "pickscore", "--model", tiny_clip_dir, "--images", root, "--into", tmp_path / "x") == 1


def test_video_mistakes_exit_with_one_line(video_folder, folder, tiny_clip_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "s.json"
    assert _score("--reward", "pickscore", "--model", tiny_clip_dir, "--images", video_folder, "--prompt", "x",
                  "--frames", "every:0", "--out", out) == 1
    assert "every:N" in capsys.readouterr().err
    # A folder of loose images asked to be read as videos says how to lay the frames out.
    assert _score("--reward", "temporal_consistency", "--model", tiny_clip_dir, "--images", folder, "--out", out) == 1
    assert "a folder of their own" in capsys.readouterr().err
    # No PyAV: the install hint, as one error line, before any weights load.
    from diffalign.data.videos import MissingVideoExtraError, require_av

    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(MissingVideoExtraError) as missing:
        require_av()
    assert _score("--reward", "pickscore", "--model", tmp_path / "no-weights", "--images", video_folder,
                  "--prompt", "x", "--out", out) == 1
    err = capsys.readouterr().err
    assert err == f"error: {missing.value}\n"
    # Images need no PyAV.
    assert _score("--reward", "pickscore", "--model", tiny_clip_dir, "--images", folder, "--prompt", "x", "--out", out) == 0


@pytest.mark.parametrize("form", ["json", "jsonl"])
def test_a_prompts_file_naming_images_that_are_not_there_is_refused(form, folder, tiny_clip_dir, capsys):
    names = ["a.png", "b.png", "c.png", "sub/d.png", "sub/e.png", "sub/f.png", "g.png"]  # the last two are missing
    prompts = folder.parent / f"prompts.{form}"
    records = [{"file_name": n, "text": f"prompt of {n}"} for n in names]
    prompts.write_text(json.dumps(records) if form == "json" else "\n".join(map(json.dumps, records)))
    out = folder.parent / "scores.parquet"
    assert _score("--reward", "pickscore", "--model", tiny_clip_dir, "--images", folder, "--prompts", prompts,
                  "--out", out) == 1
    err = capsys.readouterr().err
    assert "names 2 image(s) that are not in the folder" in err and "sub/f.png" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("where", ["foreign file", "inside the images", "the prompts file"])
def test_score_never_writes_over_what_it_did_not_write(where, folder, tiny_clip_dir, capsys):
    prompts = folder.parent / "prompts.txt"
    out = {"foreign file": folder.parent / "mine.json", "inside the images": folder / "scores.json",
           "the prompts file": prompts}[where]
    if where == "foreign file":
        out.write_text('{"my": "notes"}')
    before = {p: p.read_bytes() for p in folder.parent.rglob("*") if p.is_file()}
    assert _score("--reward", "pickscore", "--model", tiny_clip_dir, "--images", folder, "--prompts", prompts,
                  "--out", out) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --out ") and "Traceback" not in err
    assert {p: p.read_bytes() for p in folder.parent.rglob("*") if p.is_file()} == before
