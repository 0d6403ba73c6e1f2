"""The training-step benchmark's set-ups (diffalign.benchmarks.train_step_setups): each name turns on
its trainer switches. The set-ups timed end to end are in test_train_step_benchmark.py."""

import pytest

from diffalign.benchmarks.train_step_setups import compiles


@pytest.mark.parametrize(
    "setup, ckpt, compiled, budget",
    [
        ("diffalign", False, False, None),
        ("diffalign+regional", False, "regional", None),
        ("diffalign+ckpt", True, False, None),
        ("diffalign+compile", False, True, None),
        ("diffalign+ckpt+compile", True, True, None),
        ("diffalign+compile+budget", False, True, 0.6),
    ],
)
def test_setup_names_turn_on_their_switches(setup, ckpt, compiled, budget, tmp_path):
    from diffalign.benchmarks.train_step import apply_defaults, parser
    from diffalign.benchmarks.train_step_setups import diffalign_config

    args = parser().parse_args(["--memory-budget", "0.6", "--device", "cpu"])
    apply_defaults(args)
    for folder in ("model", "data"):
        (tmp_path / folder).mkdir()
    config = diffalign_config(args, str(tmp_path / "model"), tmp_path / "data", tmp_path / "out", setup)
    assert (config.gradient_checkpointing, config.compile, config.compile_memory_budget) == (ckpt, compiled, budget)
    assert config.data.cache == "auto"  # the default
    uncached = diffalign_config(args, str(tmp_path / "model"), tmp_path / "data", tmp_path / "out", "diffalign-uncached")
    assert uncached.data.cache is False


def test_only_compile_and_regional_set_ups_compile():
    assert [s for s in ("diffalign", "diffalign+ckpt", "diffalign+regional", "diffalign+compile+budget", "naive") if compiles(s)] == [
        "diffalign+regional", "diffalign+compile+budget"]
