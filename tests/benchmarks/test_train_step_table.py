"""The training-step benchmark's table (diffalign.benchmarks.train_step_table): ratios, rounds, columns
and the one-off costs under it, on rows made up here."""

import pytest

from diffalign.benchmarks.train_step_table import add_ratios, columns, combine_rounds, one_off_costs


def _row(setup, step_s, peak_mib):
    return {"setup": setup, "median_step_s": step_s, "pairs_per_s": 2 / step_s, "peak_mib": peak_mib, "step_times_s": [step_s]}


def test_each_round_is_judged_against_its_own_baseline_run():
    args = type("Args", (), {"batch_size": 2, "peak_tflops": None})()
    rounds = [add_ratios([_row("naive", 2.0, 100.0), _row("diffalign", 1.0, 50.0)]),
              add_ratios([_row("naive", 4.0, 100.0), _row("diffalign", 1.0, 25.0)])]
    naive, diffalign = combine_rounds(rounds, args)
    assert naive["speedup_naive"] == 1 and naive["speedup_naive_range"] is None  # a baseline's own ratios are all 1
    assert diffalign["speedup_naive"] == pytest.approx(3.0) and diffalign["speedup_naive_range"] == "2.00–4.00"
    assert diffalign["memory_ratio_naive"] == pytest.approx(0.375) and diffalign["peak_mib"] == pytest.approx(37.5)
    assert diffalign["step_times_s"] == [1.0, 1.0] and diffalign["rounds"] == 2 and "speedup_peer" not in diffalign


def test_in_lock_step_a_row_is_judged_against_the_peer_run_it_took_turns_with():
    peer, paired = _row("peer", 2.0, 100.0), _row("diffalign-uncached", 1.0, 50.0)
    paired["paired_peer_pairs_per_s"] = 2 / 3.0  # its own peer run was slower than the peer row's median
    other = _row("diffalign", 1.0, 50.0)
    add_ratios([peer, paired, other])
    assert paired["speedup_peer"] == pytest.approx(3.0) and other["speedup_peer"] == pytest.approx(2.0)


def test_one_off_costs_are_listed_under_the_table():
    text = one_off_costs({"cache_build_s": 1.25, "compiler_startup_mib": 70.4,
                          "first_compile": {"diffalign+compile": {"seconds": 95.2, "peak_mib": 191.04}}})
    assert "latent cache build (once per dataset and resolution): 1.2 s" in text
    assert "compiler start-up (once per process): 70 MiB" in text
    assert "first compile of diffalign+compile" in text and "95 s, peak memory 191.0 MiB" in text
    assert one_off_costs({"cache_build_s": 2.0}).count("\n") == 1


def test_the_memory_ratio_leads_with_allocated_memory_on_both_devices():
    cuda = {key: header for key, header, _ in columns("cuda")}
    cpu = {key: header for key, header, _ in columns("cpu")}
    # CUDA's peak_mib is max_memory_allocated; CPU's counterpart is the live-tensor peak, RSS beside it.
    assert cuda["peak_mib"] == cpu["tensor_peak_mib"] == "peak allocated (MiB)"
    assert cpu["peak_mib"] == "peak RSS (MiB)" and "tensor_peak_mib" not in cuda
    keys = [key for key, _, _ in columns("cpu")]
    assert keys.index("tensor_memory_ratio_peer") < keys.index("tensor_memory_ratio_naive") < keys.index("memory_ratio_peer")
    # The peer's ratios lead the naive loop's.
    assert keys.index("speedup_peer") < keys.index("speedup_naive")
