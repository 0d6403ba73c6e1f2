"""The toy benchmark end to end, reduced to a few steps (the full run is the slow test)."""

import json

import pytest

from diffalign.toy.benchmark import (ALL_OBJECTIVES, DEFAULT_OBJECTIVES, ORACLE, PROTOCOL, TOY_LR, BenchmarkConfig,
                                     choose_lr, run_benchmark)
from diffalign.toy.pretrain import PretrainConfig, base_model

TINY = PretrainConfig(images=64, vae_steps=2, unet_steps=2, batch_size=8)


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory):
    """One pretraining cache for the module's runs: pretraining is deterministic and cached (the
    first test checks both), so each run need not pretrain its own copy (CI budget)."""
    return tmp_path_factory.mktemp("toy-cache")


def test_pretraining_is_cached_and_deterministic(tmp_path, toy_cache):
    first = base_model(TINY, cache=toy_cache, progress=False)
    again = base_model(TINY, cache=toy_cache, progress=False)
    assert first == again and (first / "model_index.json").exists()
    other = base_model(TINY, cache=tmp_path / "b", progress=False)
    a = (first / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    b = (other / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert a == b  # same seed, same weights
    assert not list((toy_cache / "toy").glob(".*.tmp"))


def test_the_default_config_uses_the_shipped_base_model(tmp_path, monkeypatch):
    """The first `diffalign demo` must not spend ~6 minutes pretraining: the shipped model is the
    default config's (a change of the defaults without remaking it would fail here)."""
    from diffusers import StableDiffusionPipeline

    from diffalign.toy import pretrain

    monkeypatch.setattr(pretrain, "pretrain", lambda *args, **kwargs: pytest.fail("pretrained instead of shipped"))
    folder = base_model(PretrainConfig(), cache=tmp_path, progress=False)
    assert folder == pretrain.PACKAGED and not any(tmp_path.iterdir())
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    assert pipe.vae.config.scaling_factor == json.loads((folder / "pretrain.json").read_text())["latent_scale"]


@pytest.mark.slow
def test_the_pretraining_command_remakes_a_model_that_follows_prompts(tmp_path):
    """`python -m diffalign.toy.pretrain` is how the shipped model was made (~6 min on 2 cores);
    what it makes follows the prompts as the shipped model does."""
    import subprocess
    import sys

    from diffalign.toy import pretrain
    from diffalign.toy.samples import generate, grid, sampling_pipe
    from diffalign.toy.reward import follows_prompt

    subprocess.run([sys.executable, "-m", "diffalign.toy.pretrain", "--out", str(tmp_path / "remade"), "--no-progress"],
                   check=True, timeout=1800)
    prompts, seeds = grid(4, offset=123)
    for folder in (pretrain.PACKAGED, tmp_path / "remade"):
        images = generate(sampling_pipe(folder), prompts, seeds, steps=20, guidance=4.0)
        assert follows_prompt(images, prompts).float().mean() >= 0.9, folder


def test_every_objective_is_in_the_benchmark():
    from diffalign.objectives import OBJECTIVES

    assert set(ALL_OBJECTIVES) == set(OBJECTIVES)
    assert set(DEFAULT_OBJECTIVES) == set(OBJECTIVES)


def test_reduced_benchmark_writes_every_field(tmp_path, toy_cache):
    # One objective per kind of data and step: pairs, ranked groups, captions, inverted latents with
    # scores, rollouts with a step-aware model, experts.
    config = BenchmarkConfig(
        objectives=("diffusion_dpo", "rank_dpo", "dcpo", "smpo", "spo", "diffusion_dro"),
        pretrain=TINY, samples_per_prompt=4, group_size=4, inference_steps=2, train_steps=2, batch_size=2,
        eval_seeds_per_prompt=1, curve_every=1, curve_seeds_per_prompt=1, step_aware_steps=2, equal_time=False,
    )
    results = run_benchmark(tmp_path / "run", config, cache=toy_cache, progress=False)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert set(saved["objectives"]) == set(config.objectives)
    for name, r in saved["objectives"].items():
        for key in ("reward_before", "reward", "gain", "win_rate", "prompt_following", "wall_seconds", "curve", "grid",
                    "seconds_per_step", "step_cost_vs_dpo"):
            assert key in r, (name, key)
        assert set(r["gain"]) == {"value", "low", "high"} and r["gain"]["low"] <= r["gain"]["high"]
        assert [point[0] for point in r["curve"]] == [0, 1, 2]
        from PIL import Image

        width, height = Image.open(tmp_path / "run" / f"grid_{name}.png").size
        assert width >= 8 * 128 and height >= 2 * 128  # eight prompts, before and after, each at 128 px or more
    assert 0 <= saved["base"]["prompt_following"] <= 1
    spo = saved["objectives"]["spo"]  # a sampling step: its seconds split into rolling out and training
    assert spo["rollout_seconds_per_step"] > 0 and spo["train_seconds_per_step"] > 0
    assert spo["at_dpo_time"]["updates"] in (0, 1, 2)
    table = (tmp_path / "run" / "report.md").read_text()
    assert "| spo | 2 |" in table  # the cost table: updates, seconds, rollout and training seconds
    assert all(f"| {name} |" in table for name in config.objectives)
    assert (tmp_path / "run" / "reward_curve.png").stat().st_size > 1000
    # The preference data: pairs with captions for DCPO, ranked groups of 4 with scores.
    from diffalign.data import PreferenceDataset

    pairs = PreferenceDataset.open(tmp_path / "run" / "data" / "pairs")
    ranked = PreferenceDataset.open(tmp_path / "run" / "data" / "ranked")
    assert pairs.group_size == 2 and ranked.group_size == 4 and len(pairs) == len(ranked) == 8
    row = ranked[0]
    assert row["scores"] == sorted(row["scores"], reverse=True)
    assert all(c.split()[1] in ("large", "small") for c in pairs[0]["captions"])
    # SPO's step-aware model was trained on the toy's pairs first, and its held-out accuracy kept.
    accuracy = saved["step_aware"]["heldout_accuracy"]["heldout"]
    assert 0 <= accuracy["mean"] <= 1
    experts = PreferenceDataset.open(tmp_path / "run" / "data" / "experts")
    assert experts.group_size == 1 and len(experts) == 8


def test_reward_at_diffusion_dpos_wall_time():
    """DPO: 128 updates × 0.5 s = 64 s. An objective at 2 s per update fits 32 updates in that time:
    its curve point at 32 (not 64), whatever its end."""
    from diffalign.toy.summary import equal_time

    objectives = {"diffusion_dpo": {"curve": [(0, 0.2, 1.0), (128, 0.25, 1.0)], "seconds_per_step": 0.5},
                  "grpo": {"curve": [(0, 0.2, 1.0), (32, 0.21, 1.0), (64, 0.23, 1.0), (150, 0.26, 1.0)],
                           "seconds_per_step": 2.0}}
    equal_time(objectives)
    assert objectives["grpo"]["at_dpo_time"] == {"seconds": 64.0, "updates": 32, "curve_reward": 0.21}
    assert objectives["diffusion_dpo"]["at_dpo_time"]["updates"] == 128


def test_a_variant_is_its_objective_with_its_settings_merged_block_by_block():
    from diffalign.toy.benchmark import VARIANTS, check_runs, objective_of, run_settings

    mix = run_settings(BenchmarkConfig(), "mixgrpo")
    grpo = DEFAULT_OBJECTIVES["grpo"]
    assert mix["objective"] == grpo["objective"] and mix["max_steps"] == 150
    assert mix["rollout"] == {**grpo["rollout"], "sde_window": 2, "sde_window_range": 8, "sde_window_shift_every": 10,
                              "ode": "dpm2"}
    assert run_settings(BenchmarkConfig(), "grpo") == grpo and objective_of("spo_oracle") == "spo"
    assert set(VARIANTS) >= {ORACLE, "grpo_fast", "mixgrpo"}
    with pytest.raises(ValueError, match="unknown objective 'grpo_slow': choose from .*mixgrpo"):
        check_runs(("grpo", "grpo_slow"))


def test_equal_time_runs_train_for_diffusion_dpos_time_and_are_reported(tmp_path, toy_cache):
    """Asked for after it, Diffusion-DPO still runs first; the fast variant then trains once more per
    seed for ⌊DPO's training seconds / its own seconds per update⌋ updates (at least 1), evaluated
    on the held-out seeds, and the report's equal-time table has both rows."""
    config = BenchmarkConfig(
        objectives=("grpo_fast", "diffusion_dpo"), pretrain=TINY, samples_per_prompt=4, group_size=4,
        inference_steps=2, train_steps=2, batch_size=2, eval_seeds_per_prompt=1, curve_every=1,
        curve_seeds_per_prompt=1, train_seeds=2)
    results = run_benchmark(tmp_path / "run", config, cache=toy_cache, progress=False)
    assert list(results["objectives"]) == ["diffusion_dpo", "grpo_fast"]
    dpo, fast = results["objectives"]["diffusion_dpo"], results["objectives"]["grpo_fast"]
    budget = 2 * dpo["seconds_per_step"]
    assert "equal_time" not in dpo and fast["equal_time"]["budget_seconds"] == pytest.approx(budget, abs=0.051)
    short = fast["equal_time"]["runs"]
    assert [run["seed"] for run in short] == [0, 1]
    for run, full in zip(short, fast["runs"]):
        assert run["updates"] == max(1, int(budget // full["seconds_per_step"]))
        assert run["curve"][-1][0] == run["updates"] and set(run["gain"]) == {"value", "low", "high"}
        assert run["weights"].endswith(f"-{run['updates']}-updates")
    assert fast["equal_time"]["mean_gain"] == pytest.approx(sum(r["gain"]["value"] for r in short) / 2)
    assert fast["scoring_seconds_per_step"] > 0  # the online step's seconds split three ways
    report = (tmp_path / "run" / "report.md").read_text()
    table = report[report.index("At Diffusion-DPO's wall-clock budget"):]
    assert "| diffusion_dpo | 2 |" in table and "| grpo_fast |" in table
    assert "| scoring s |" in report


def test_the_rate_is_chosen_on_the_curve_among_those_that_keep_prompt_following():
    # lr → curve points (step, reward, prompt following); base following 0.98.
    sweep = {1e-4: [(0, 0.20, 0.98), (64, 0.22, 0.97)], 3e-4: [(0, 0.20, 0.98), (64, 0.25, 0.95)],
             1e-3: [(0, 0.20, 0.98), (64, 0.30, 0.80)]}
    assert choose_lr(sweep, base_following=0.98) == 3e-4  # 1e-3 is higher but breaks prompt following
    assert choose_lr({1e-3: sweep[1e-3]}, base_following=0.98) == 1e-3  # none keeps it: the highest


def test_the_protocol_sweeps_then_trains_more_seeds_at_the_chosen_rate(tmp_path, toy_cache):
    config = BenchmarkConfig(
        objectives=("diffusion_dpo", ORACLE), pretrain=TINY, samples_per_prompt=4, group_size=4, inference_steps=2,
        train_steps=2, batch_size=2, eval_seeds_per_prompt=1, curve_every=1, curve_seeds_per_prompt=1,
        step_aware_steps=2, lr_sweep=(1e-4, 1e-3), train_seeds=2, equal_time=False,
    )
    results = run_benchmark(tmp_path / "run", config, cache=toy_cache, progress=False)
    for name in ("diffusion_dpo", ORACLE):
        r = results["objectives"][name]
        assert set(r["sweep"]) == {"0.0001", "0.001"} and r["lr"] in (1e-4, 1e-3)
        assert [run["seed"] for run in r["runs"]] == [0, 1] and {run["lr"] for run in r["runs"]} == {r["lr"]}
        assert r["mean_gain"] == pytest.approx(sum(run["gain"]["value"] for run in r["runs"]) / 2)
        chosen = choose_lr({float(lr): s["curve"] for lr, s in r["sweep"].items()}, results["base"]["curve_following"])
        assert chosen == r["lr"]
    assert results["objectives"][ORACLE]["runs"][0]["proxy"]  # SPO's own score beside the true reward
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Learning-rate sweep" in report and "| spo_oracle |" in report


def test_the_protocol_and_the_toy_rates_cover_every_objective():
    assert set(TOY_LR) == set(ALL_OBJECTIVES) and PROTOCOL["train_seeds"] >= 3 and len(PROTOCOL["lr_sweep"]) >= 3


@pytest.mark.slow
def test_full_benchmark_improves_the_reward(tmp_path):
    """The truth test, the protocol of benchmarks/results/toy.md (about 90 minutes on 2 cores): no
    objective lowers the reward at its chosen rate; InPO, SmPO and the online objectives (grpo,
    dance_grpo, diffusion_nft) gain on every training seed and keep prompt following within 0.05 of the base; SPO
    with the toy reward as its scorer gains on every seed (with its learned scorer it does not:
    benchmarks/results/toy.md says why)."""
    config = BenchmarkConfig(objectives=(*ALL_OBJECTIVES, ORACLE), **PROTOCOL)
    results = run_benchmark(tmp_path / "run", config, progress=False)
    print((tmp_path / "run" / "report.md").read_text())
    for name, r in results["objectives"].items():
        if name != "spo":
            assert r["mean_gain"] > 0, f"{name}: mean gain {r['mean_gain']}"
    for name in ("inpo", "smpo", "grpo", "dance_grpo", "diffusion_nft", ORACLE):
        r = results["objectives"][name]
        assert r["every_seed_gains"], f"{name}: {[run['gain'] for run in r['runs']]}"
    for name in ("inpo", "smpo", "grpo", "dance_grpo", "diffusion_nft"):
        assert results["objectives"][name]["min_prompt_following"] >= results["base"]["prompt_following"] - 0.05
    chosen = {name: r["lr"] for name, r in results["objectives"].items() if name != ORACLE}
    assert chosen == TOY_LR, "the toy learning rates are the protocol's choice"
