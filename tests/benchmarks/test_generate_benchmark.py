"""The generation benchmark on a tiny SDXL pipeline: every set-up runs on the same prompts and
seeds, the counts and ratios in the report add up, and bad input gets a clear error."""

import json

import pytest

from diffalign.benchmarks.generate import SETUPS, benchmark_prompts, main

PROMPTS = 3  # with --batch-size 2 the batched set-ups also run a short last batch


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-generate")
    argv = ["--prompts", str(PROMPTS), "--steps", "2", "--resolution", "32", "--batch-size", "2",
            "--device", "cpu", "--dtype", "fp32", "--out", str(out)]
    assert main(argv) == 0
    return json.loads((out / "generate.json").read_text()), (out / "generate.md").read_text()


def test_every_setup_generates_one_image_per_prompt(report):
    payload, _ = report
    rows = {row["setup"]: row for row in payload["rows"]}
    assert list(rows) == list(SETUPS)
    assert all(row["images"] == PROMPTS for row in rows.values())
    assert rows["evaluation"]["png_files"] == PROMPTS  # counted on disk, not taken from the call


def test_rates_and_ratios_agree_with_the_timings(report):
    payload, _ = report
    naive = payload["rows"][0]
    for row in payload["rows"]:
        assert row["seconds"] > 0 and row["images_per_s"] == pytest.approx(row["images"] / row["seconds"])
        assert row["ratio"] == pytest.approx(row["images_per_s"] / naive["images_per_s"])
        assert row["peak_mib"] >= 0
    assert naive["ratio"] == 1


def test_batched_images_match_the_naive_ones(report):
    # fp32 batching only reorders float sums (differences around 1e-6), which can tip a pixel over a
    # uint8 rounding boundary: one level at most. Other seeds or prompts change pixels by tens of levels.
    payload, _ = report
    assert all(row["max_abs_pixel_diff"] <= 1 for row in payload["rows"])


def test_report_records_the_settings_and_a_row_per_setup(report):
    payload, markdown = report
    assert payload["settings"]["prompts"] == PROMPTS and payload["settings"]["dtype"] == "fp32"
    assert payload["command"].startswith("python benchmarks/generate.py --prompts 3")
    for setup in SETUPS:
        assert f"| {setup} |" in markdown


def test_prompts_are_fixed_and_distinct():
    assert benchmark_prompts(5) == benchmark_prompts(5)
    assert len(set(benchmark_prompts(48))) == 48


def test_missing_model_folder_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "no-such-pipeline"
    assert main(["--model", str(missing), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "model_index.json" in err
    assert not (tmp_path / "out").exists()
