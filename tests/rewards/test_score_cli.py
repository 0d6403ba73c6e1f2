"""``diffalign score`` on a folder of images and on a preference dataset writes the scores file."""

import json
import os
import subprocess
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


def test_the_runnable_script(folder, tiny_clip_dir, tmp_path):
    out = tmp_path / "scores.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "reward_models" / "score.py"), "--reward", "pickscore", "--model", str(tiny_clip_dir),
         "--images", str(folder), "--prompt", "a cat", "--out", str(out), "--no-progress"],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert len(json.loads(out.read_text())["scores"]) == 5
