"""Video end to end on the tiny Wan: the synthetic ranked builder makes a video dataset scored by
a frame-averaged tiny reward, and ``diffalign evaluate`` writes a report with animated previews."""

import base64
import io
import json
import re
import shutil
import subprocess

import pytest
import torch
from PIL import Image

from diffalign.builders.synthetic import build_synthetic
from diffalign.cli import main
from diffalign.data import PreferenceDataset
from diffalign.evaluation.generate import sample_path
from diffalign.testing import TINY_FRAMES

pytest.importorskip("av")
SAMPLING = dict(steps=2, height=32, width=32)


def test_synthetic_ranked_videos(tiny_path, tmp_path):
    from diffusers import WanPipeline

    from diffalign.data.videos import read_frames
    from diffalign.rewards.tiny import tiny_reward

    reward = tiny_reward("pickscore")
    prompts = ["a red cat", "a blue dog"]
    manifest = build_synthetic(prompts, [str(tiny_path("wan"))], tmp_path / "out", reward, images_per_prompt=3,
                               seed=5, frames=TINY_FRAMES, progress=False, **SAMPLING)
    assert manifest["media"] == "video" and manifest["frames"] == TINY_FRAMES and manifest["group_size"] == 3
    data = PreferenceDataset.open(tmp_path / "out")
    assert data.media == "video" and len(data) == 2
    row = data[1]
    assert row["scores"] == sorted(row["scores"], reverse=True)
    clip = read_frames(row["images"][0]["bytes"])
    assert clip.shape == (TINY_FRAMES, 3, 32, 32)
    # The best clip's score is the tiny PickScore's mean over its frames, recomputed here from the
    # pipeline run again with the recorded seed (the stored MP4 is lossy; the reward saw these frames).
    seed = json.loads(row["meta"])["seeds"][0]
    pipe = WanPipeline.from_pretrained(str(tiny_path("wan")))
    frames = pipe(prompts[1], num_frames=TINY_FRAMES, num_inference_steps=2, height=32, width=32, output_type="pt",
                  generator=torch.Generator().manual_seed(seed)).frames[0]
    frames = (frames.clamp(0, 1) * 255).round() / 255
    by_hand = reward.score(frames, [prompts[1]] * TINY_FRAMES).mean()
    assert row["scores"][0] == pytest.approx(float(by_hand), abs=1e-4)
    assert (clip.float() / 255 - frames).abs().mean() < 0.05  # the MP4 holds (nearly) those frames


def test_synthetic_videos_with_an_ensemble_record_each_member(tiny_path, tmp_path):
    from diffalign.rewards import Ensemble
    from diffalign.rewards.tiny import tiny_reward

    members = [tiny_reward("pickscore", seed=0), tiny_reward("aesthetic", seed=1)]
    reward = Ensemble(members, [2.0, 1.0], {"pickscore": {"mean": 9.0, "std": 2.0}, "aesthetic_v2": {"mean": 0.0, "std": 0.5}})
    build_synthetic(["a red cat"], [str(tiny_path("wan"))], tmp_path / "out", reward, images_per_prompt=2,
                    frames=TINY_FRAMES, progress=False, **SAMPLING)
    row = PreferenceDataset.open(tmp_path / "out")[0]
    members = json.loads(row["meta"])["member_scores"]
    assert set(members) == {"pickscore@frames:all", "aesthetic_v2@frames:all"}
    # The row's score is the ensemble's of the members' clip scores: (2·(p − 9)/2 + 1·a/0.5) / 3.
    p, a = members["pickscore@frames:all"][0], members["aesthetic_v2@frames:all"][0]
    assert row["scores"][0] == pytest.approx((2 * (p - 9) / 2 + a / 0.5) / 3, abs=1e-5)


@pytest.fixture(scope="module")
def evaluated_video(tiny_path, tmp_path_factory):
    from diffalign.rewards.tiny import save_tiny_clip

    root = tmp_path_factory.mktemp("evaluate-video")
    prompts = root / "prompts.txt"
    prompts.write_text("a red cat\na blue dog\na green tree\n")
    out = root / "out"
    argv = ["evaluate", "--base", str(tiny_path("wan")), "--candidate", str(tiny_path("wan")), "--prompts", str(prompts),
            "--out", str(out), "--samples", "2", "--steps", "2", "--guidance", "3", "--height", "32", "--width", "32",
            "--frames", str(TINY_FRAMES), "--reward", "pickscore", "--model", str(save_tiny_clip(root / "pickscore")),
            "--no-progress"]
    assert main(argv) == 0
    return out, argv


def test_evaluate_a_video_model(evaluated_video):
    out, argv = evaluated_video
    results = json.loads((out / "results.json").read_text())
    label = "pickscore@frames:all"
    pick = results["rewards"][label]
    assert pick["win_rate"]["value"] == 0.5 and pick["gain"]["value"] == 0.0  # candidate = base, same seeds
    assert results["generation"]["frames"] == TINY_FRAMES
    assert len(results["per_prompt"][label]["base"]) == 3
    assert sample_path(out / "candidate", 2, 1, video=True).is_file()
    page = (out / "report.html").read_text()
    previews = re.findall(r"src='data:image/webp;base64,([^']+)'", page)
    assert len(previews) == 2 * 3 * 2 * 2  # best 3 and worst 3 prompts (each of the 3), 2 samples, both arms
    animation = Image.open(io.BytesIO(base64.b64decode(previews[0])))
    assert animation.n_frames == TINY_FRAMES  # animated, every frame of the clip
    assert f"{label}: " in page and "→" in page  # each prompt's rewards under its previews
    stamp = sample_path(out / "base", 0, 0, video=True).stat().st_mtime_ns
    assert main(argv) == 0  # resumable: nothing is generated again
    assert sample_path(out / "base", 0, 0, video=True).stat().st_mtime_ns == stamp


def test_evaluate_video_refuses_geneval_and_bad_frames(tiny_path, tmp_path, capsys):
    from diffalign.rewards.tiny import save_tiny_clip

    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    base = ["evaluate", "--base", str(tiny_path("wan")), "--prompts", str(prompts), "--out", str(tmp_path / "o"),
            "--steps", "1", "--height", "32", "--width", "32", "--reward", "pickscore", "--samples", "1",
            "--model", str(save_tiny_clip(tmp_path / "pickscore"))]
    assert main([*base, "--frames", "6"]) == 1
    assert "6 frames cannot be encoded" in capsys.readouterr().err
    assert main(base) == 1
    assert "makes videos: give the number of frames" in capsys.readouterr().err
    assert not (tmp_path / "o" / "base" / "generation.json").exists()  # refused before anything was written


def test_video_report_renders_in_headless_chromium(evaluated_video, tmp_path):
    """The animated WebP previews decode and paint in a browser (their frames are checked by PIL in
    test_evaluate_a_video_model; a headless screenshot shows one frame of each)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs only Python packages")
    out, _ = evaluated_video
    shot = tmp_path / "shot.png"
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=900,1100", "--virtual-time-budget=400",
                    f"--screenshot={shot}", (out / "report.html").as_uri()], capture_output=True, timeout=120)
    pixels = list(Image.open(shot).convert("RGB").getdata())
    # The tiny random Wan paints grey clips: 12 previews of 128 px on screen are ~200,000 grey
    # pixels; the page's text and table lines alone are a few thousand.
    grey = sum(1 for p in pixels if 90 < p[0] < 200 and max(p) - min(p) < 12)
    assert grey > 100_000
