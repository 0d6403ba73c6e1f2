"""The toy benchmark end to end, reduced to a few steps (the full run is the slow test)."""

import json

import pytest

from diffalign.toy.benchmark import ALL_OBJECTIVES, BenchmarkConfig, run_benchmark
from diffalign.toy.pretrain import PretrainConfig, base_model

TINY = PretrainConfig(images=64, vae_steps=2, unet_steps=2, batch_size=8)


def test_pretraining_is_cached_and_deterministic(tmp_path):
    first = base_model(TINY, cache=tmp_path / "a", progress=False)
    again = base_model(TINY, cache=tmp_path / "a", progress=False)
    assert first == again and (first / "model_index.json").exists()
    other = base_model(TINY, cache=tmp_path / "b", progress=False)
    a = (first / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    b = (other / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert a == b  # same seed, same weights
    assert not list((tmp_path / "a" / "toy").glob(".*.tmp"))


def test_reduced_benchmark_writes_every_field(tmp_path):
    config = BenchmarkConfig(
        pretrain=TINY, samples_per_prompt=4, group_size=4, inference_steps=2, train_steps=2, batch_size=2,
        eval_seeds_per_prompt=1, curve_every=1, curve_seeds_per_prompt=1,
    )
    results = run_benchmark(tmp_path / "run", config, cache=tmp_path / "cache", progress=False)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert set(saved["objectives"]) == set(ALL_OBJECTIVES)
    for name, r in saved["objectives"].items():
        for key in ("reward_before", "reward", "gain", "win_rate", "prompt_following", "wall_seconds", "curve", "grid"):
            assert key in r, (name, key)
        assert set(r["gain"]) == {"value", "low", "high"} and r["gain"]["low"] <= r["gain"]["high"]
        assert [step for step, _ in r["curve"]] == [0, 1, 2]
        assert (tmp_path / "run" / f"grid_{name}.png").exists()
    assert 0 <= saved["base"]["prompt_following"] <= 1
    table = (tmp_path / "run" / "report.md").read_text()
    assert all(f"| {name} |" in table for name in ALL_OBJECTIVES)
    assert (tmp_path / "run" / "reward_curve.png").stat().st_size > 1000
    # The preference data: pairs with captions for DCPO, ranked groups of 4 with scores.
    from diffalign.data import PreferenceDataset

    pairs = PreferenceDataset.open(tmp_path / "run" / "data" / "pairs")
    ranked = PreferenceDataset.open(tmp_path / "run" / "data" / "ranked")
    assert pairs.group_size == 2 and ranked.group_size == 4 and len(pairs) == len(ranked) == 8
    row = ranked[0]
    assert row["scores"] == sorted(row["scores"], reverse=True)
    assert all(c.split()[1] in ("large", "small") for c in pairs[0]["captions"])


@pytest.mark.slow
def test_full_benchmark_improves_the_reward(tmp_path):
    """The truth test: every objective must raise the reward of fresh samples over the base."""
    results = run_benchmark(tmp_path / "run", BenchmarkConfig(), progress=False)
    print((tmp_path / "run" / "report.md").read_text())
    for name in ("diffusion_dpo", "mapo", "rank_dpo", "sft"):
        gain = results["objectives"][name]["gain"]
        assert gain["low"] > 0, f"{name}: gain {gain} does not exclude zero"
