"""The scoring benchmark on every tiny reward: naive and batched runs score the same images to the
same values, the report's rates and ratios add up, and bad input gets a clear error."""

import json

import pytest
import torch

from diffalign.benchmarks.score import main, parse_rewards, random_images
from diffalign.rewards.tiny import TINY_REWARDS, save_tiny_reward
from diffalign.rewards import REWARDS, load_reward
from diffalign.rewards.tiny import tiny_reward

IMAGES = 4  # with --batch-size 3 the batched run also scores a short last batch
# One reward per architecture (OpenCLIP-converted, BLIP, transformers CLIP without prompts) keeps the
# file fast; every tiny build is loaded and checked by test_tiny_build_loads_back_as_the_tiny_model.
TIMED = ["hpsv2.1", "image_reward", "aesthetic"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-score")
    argv = ["--rewards", *TIMED, "--images", str(IMAGES), "--batch-size", "3", "--resolution", "32", "--device", "cpu",
            "--dtype", "fp32", "--out", str(out)]
    assert main(argv) == 0
    return json.loads((out / "score.json").read_text()), (out / "score.md").read_text()


def test_every_reward_scores_every_image_both_ways(report):
    payload, _ = report
    assert [row["name"] for row in payload["rows"]] == TIMED
    for row in payload["rows"]:
        assert row["naive_images"] == row["batched_images"] == row["images"] == IMAGES


def test_rates_and_ratios_agree_with_the_timings(report):
    payload, _ = report
    for row in payload["rows"]:
        assert row["naive_images_per_s"] == pytest.approx(IMAGES / row["naive_seconds"])
        assert row["batched_images_per_s"] == pytest.approx(IMAGES / row["batched_seconds"])
        assert row["naive_images_per_s"] > 0 and row["batched_images_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["batched_images_per_s"] / row["naive_images_per_s"])


def test_batching_does_not_change_scores(report):
    payload, _ = report
    assert all(row["max_abs_score_diff"] < 1e-3 for row in payload["rows"])  # fp32; scales up to ×100


def test_markdown_has_a_row_per_reward(report):
    _, markdown = report
    for name in TIMED:
        assert f"| {name} (tiny) |" in markdown


@pytest.mark.parametrize("name", TINY_REWARDS)
def test_tiny_build_loads_back_as_the_tiny_model(name, tmp_path):
    """What the benchmark times is the tiny model itself, read through the real loader."""
    path, kwargs = save_tiny_reward(name, tmp_path / name)
    images = random_images(2, 32, seed=1)
    prompts = ["a red cat", "a blue square"]
    loaded = load_reward(name, path, **kwargs)
    assert torch.allclose(loaded.score(images, prompts), tiny_reward(name).score(images, prompts), atol=1e-5)


def test_reward_names_and_paths_are_parsed():
    assert parse_rewards(["pickscore", "hpsv2.1=/models/hps"]) == [("pickscore", None), ("hpsv2.1", "/models/hps")]
    assert [name for name, _ in parse_rewards(None)] == list(REWARDS)  # the default: every reward, tiny
    assert set(TINY_REWARDS) == set(REWARDS)  # a new reward needs a tiny build here, or NAME=PATH to be timed


def test_unknown_reward_names_the_valid_ones(tmp_path, capsys):
    assert main(["--rewards", "pikscore", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'pikscore'" in err and all(name in err for name in REWARDS)
    assert not (tmp_path / "score.json").exists()


def test_missing_weights_are_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "no" / "such" / "pickscore"
    assert main(["--rewards", f"pickscore={missing}", "--out", str(tmp_path / "out")]) == 2
    assert str(missing) in capsys.readouterr().err
