"""The synthetic ranked builder: ranks follow the scores, seeds reproduce the images, the
manifest names generators and rewards, pairs derive from groups, and a killed build resumes."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from diffalign.builders.ranked_pairs import ranked_to_pairs
from diffalign.builders.synthetic import build_synthetic
from diffalign.cli import main
from diffalign.data import PreferenceDataset
from diffalign.rewards import Ensemble
from diffalign.rewards.tiny import save_tiny_clip, tiny_reward
from diffalign.testing import save_tiny_pipeline

PROMPTS = ["a red circle", "a blue square", "a green cat", "a dog", "a red square"]
SAMPLING = dict(steps=2, height=32, width=32)


@pytest.fixture(scope="module")
def generators(tmp_path_factory):
    """Two tiny SD1.5 pipelines that differ only in their random weights."""
    root = tmp_path_factory.mktemp("generators")
    return [str(save_tiny_pipeline("sd15", root / f"gen{seed}", seed=seed)) for seed in (0, 1)]


def _ensemble():
    members = [tiny_reward("pickscore", seed=0), tiny_reward("aesthetic", seed=1)]
    return Ensemble(members, [2.0, 1.0], {"pickscore": {"mean": 9.0, "std": 2.0}, "aesthetic_v2": {"mean": 0.0, "std": 0.5}})


def _pil(image):
    return Image.open(io.BytesIO(image["bytes"])).convert("RGB")


def test_two_generators_three_images_five_prompts(generators, tmp_path):
    reward = _ensemble()
    manifest = build_synthetic(PROMPTS, generators, tmp_path / "out", reward, images_per_prompt=3, seed=7,
                               batch_size=4, shard_size=2, progress=False, **SAMPLING)
    rows = list(PreferenceDataset.open(tmp_path / "out"))
    assert [r["prompt"] for r in rows] == PROMPTS and manifest["rows"] == 5 and manifest["group_size"] == 6
    assert manifest["generators"] == generators
    assert [(m["label"], m["weight"]) for m in manifest["reward_models"]] == [("pickscore", 2.0), ("aesthetic_v2", 1.0)]
    for p, row in enumerate(rows):
        scores, ranks, meta = row["scores"], row["ranks"], json.loads(row["meta"])
        assert len(row["images"]) == 6 and scores == sorted(scores, reverse=True)
        assert ranks[0] == 0 and all((ranks[i] < ranks[i + 1]) == (scores[i] > scores[i + 1]) for i in range(5))
        # Every generator drew seeds 7 + 3p + n, n = 0, 1, 2.
        for g in generators:
            assert sorted(s for s, name in zip(meta["seeds"], meta["generators"]) if name == g) == [7 + 3 * p + n for n in range(3)]
        # The scores are the ensemble's, recomputed here by hand from the members on the stored images.
        images = [_pil(img) for img in row["images"]]
        raw_pick = reward.members[0].score(images, row["prompt"])
        raw_aes = reward.members[1].score(images, row["prompt"])
        expected = (2.0 * (raw_pick - 9.0) / 2.0 + 1.0 * raw_aes / 0.5) / 3.0
        torch.testing.assert_close(torch.tensor(scores, dtype=torch.float64), expected.double(), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(torch.tensor(meta["member_scores"]["pickscore"], dtype=torch.float64), raw_pick.double(), atol=1e-4, rtol=1e-4)
    # A recorded seed reproduces its image with the pipeline called directly.
    from diffusers import StableDiffusionPipeline

    meta = json.loads(rows[3]["meta"])
    pipe = StableDiffusionPipeline.from_pretrained(meta["generators"][0])
    again = pipe("a dog", generator=torch.Generator().manual_seed(meta["seeds"][0]), num_inference_steps=2,
                 height=32, width=32).images[0]
    assert np.array_equal(np.asarray(again), np.asarray(_pil(rows[3]["images"][0])))
    assert len({img["bytes"] for img in rows[3]["images"]}) == 6  # six different images


def test_pairs_best_worst_and_all(generators, tmp_path):
    build_synthetic(PROMPTS[:2], generators, tmp_path / "out", tiny_reward("pickscore"), images_per_prompt=2,
                    pairs="best-worst", progress=False, **SAMPLING)
    groups = list(PreferenceDataset.open(tmp_path / "out"))
    best_worst = list(PreferenceDataset.open(tmp_path / "out" / "pairs"))
    assert len(best_worst) == 2
    for group, pair in zip(groups, best_worst):
        assert pair["images"] == [group["images"][0], group["images"][3]]
        assert pair["scores"] == [group["scores"][0], group["scores"][3]] and pair["ranks"] == [0, 1]
    every = ranked_to_pairs(tmp_path / "out", tmp_path / "all", "all")
    rows = list(PreferenceDataset.open(tmp_path / "all"))
    assert every["rows"] == 2 * 6 and every["group_size"] == 2
    assert [r["id"] for r in rows[:6]] == ["00000000-0-1", "00000000-0-2", "00000000-0-3", "00000000-1-2",
                                           "00000000-1-3", "00000000-2-3"]
    assert all(r["scores"][0] >= r["scores"][1] for r in rows)


def _cli(prompts_file, generators, reward_dir, out, *extra):
    return ["build", "synthetic", str(prompts_file), "--out", str(out), "--generator", generators[0],
            "--generator", generators[1], "--images-per-prompt", "2", "--steps", "2", "--height", "32",
            "--width", "32", "--reward", "pickscore", "--reward-path", f"pickscore={reward_dir}",
            "--shard-size", "1", "--no-progress", *extra]


@pytest.mark.slow  # 11 s; the default suite resumes a build stopped mid-call (below)
def test_killed_build_resumes_with_the_same_rows(generators, tmp_path, diffalign_child):
    prompts = [f"a red circle number {i}" for i in range(24)]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts))
    reward_dir = save_tiny_clip(tmp_path / "pickscore")
    out = tmp_path / "killed"
    args = _cli(tmp_path / "prompts.txt", generators, reward_dir, out)
    argv, env = diffalign_child(*args)  # the kernels of this process: the rows it made must equal ours
    proc = subprocess.Popen(argv, env=env)
    progress = out / ".progress.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if progress.exists() and len(json.loads(progress.read_text())["shards"]) >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "the build finished before it could be killed"
    assert 3 <= json.loads(progress.read_text())["position"] < 24

    assert main(args) == 0
    straight = tmp_path / "straight"
    assert main(_cli(tmp_path / "prompts.txt", generators, reward_dir, straight)) == 0
    resumed_rows, straight_rows = list(PreferenceDataset.open(out)), list(PreferenceDataset.open(straight))
    assert [r["id"] for r in resumed_rows] == [f"{i:08d}" for i in range(24)]
    assert resumed_rows == straight_rows


def test_a_build_stopped_mid_call_resumes_to_the_same_bytes(generators, tmp_path, monkeypatch):
    """Calls of 4 prompts (batch 8, 2 images each): stopped after 3 rows, the build resumes in the
    middle of a call, and must redraw that call whole, or the float32 kernels round the smaller
    call's pixels differently from an uninterrupted build's. (Which kernels do depends on the
    machine: with oneDNN off a resumed call of one prompt drew other bytes; the suite runs so too.)"""
    stop_after = 3
    from diffalign.data.writer import ShardWriter

    reward, prompts = tiny_reward("pickscore"), [f"a red circle {i}" for i in range(8)]
    build = dict(images_per_prompt=2, batch_size=8, shard_size=1, progress=False, **SAMPLING)
    build_synthetic(prompts, generators[:1], tmp_path / "straight", reward, **build)
    original = ShardWriter.advance

    def stop_at(self, position):
        if position == stop_after:
            signal.raise_signal(signal.SIGTERM)  # inside stop_requests: finish the row, keep it, stop
        original(self, position)

    monkeypatch.setattr(ShardWriter, "advance", stop_at)
    from diffalign import stopping
    from diffalign.errors import Stopped

    with stopping.stop_requests(), pytest.raises(Stopped):
        build_synthetic(prompts, generators[:1], tmp_path / "stopped", reward, **build)
    monkeypatch.setattr(ShardWriter, "advance", original)
    assert len(json.loads((tmp_path / "stopped" / ".progress.json").read_text())["shards"]) == stop_after
    build_synthetic(prompts, generators[:1], tmp_path / "stopped", reward, **build)
    assert list(PreferenceDataset.open(tmp_path / "stopped")) == list(PreferenceDataset.open(tmp_path / "straight"))


def test_options_must_match_and_errors(generators, tmp_path, capsys):
    first = build_synthetic(PROMPTS[:1], generators, tmp_path / "out", tiny_reward("pickscore"), images_per_prompt=1,
                            progress=False, **SAMPLING)
    again = build_synthetic(PROMPTS[:1], generators, tmp_path / "out", tiny_reward("pickscore"),
                            images_per_prompt=1, progress=False, **SAMPLING)
    assert again == first  # a finished build is not redone
    with pytest.raises(Exception, match="other options"):
        build_synthetic(PROMPTS[:2], generators, tmp_path / "out", tiny_reward("pickscore"), images_per_prompt=1,
                        progress=False, **SAMPLING)
    with pytest.raises(Exception, match="at least 2 images"):
        build_synthetic(PROMPTS, generators[:1], tmp_path / "one", tiny_reward("pickscore"), images_per_prompt=1)
    (tmp_path / "p.txt").write_text("a cat\n")
    args = ["build", "synthetic", str(tmp_path / "p.txt"), "--out", str(tmp_path / "x"), "--generator", generators[0],
            "--reward", "pickscore", "--reward", "aesthetic"]
    assert main(args) == 1
    assert "--reward-stats" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_give_the_same_dataset(generators, tmp_path):
    prompts = [f"a blue square {i}" for i in range(5)]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts))
    reward_dir = save_tiny_clip(tmp_path / "pickscore")
    args = _cli(tmp_path / "prompts.txt", generators, reward_dir, tmp_path / "two")
    subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                    "--main_process_port", "0", "-m", "diffalign", *args], check=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert main(_cli(tmp_path / "prompts.txt", generators, reward_dir, tmp_path / "one")) == 0
    two = PreferenceDataset.open(tmp_path / "two")
    # Each process runs other batches on one thread, so pixels may differ by float rounding, no more.
    for a, b in zip(two, PreferenceDataset.open(tmp_path / "one"), strict=True):
        assert (a["id"], a["prompt"]) == (b["id"], b["prompt"])
        meta_a, meta_b = json.loads(a["meta"]), json.loads(b["meta"])
        by_seed_a = dict(zip(zip(meta_a["generators"], meta_a["seeds"]), a["images"]))
        by_seed_b = dict(zip(zip(meta_b["generators"], meta_b["seeds"]), b["images"]))
        assert by_seed_a.keys() == by_seed_b.keys()
        for key, image in by_seed_a.items():
            diff = np.abs(np.asarray(_pil(image), dtype=int) - np.asarray(_pil(by_seed_b[key]), dtype=int))
            assert diff.max() <= 2, key
    assert two.manifest["processes"] == 2 and not (tmp_path / "two" / ".parts").exists()
