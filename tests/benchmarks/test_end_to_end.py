"""The end-to-end table (diffalign.benchmarks.end_to_end): whole runs timed from launch to exit,
the ratios per round, and diffalign's side really converting, caching and training."""

import sys

import pytest

from diffalign.benchmarks import end_to_end


def test_the_ratios_are_per_round_and_the_sweep_sums_its_runs():
    rounds = [{"peer_s": [10.0, 9.0, 9.0, 9.0], "diffalign_s": [8.0, 4.0, 4.0, 4.0]},
              {"peer_s": [12.0, 9.0, 9.0, 9.0], "diffalign_s": [12.0, 6.0, 6.0, 6.0]},
              {"peer_s": [11.0, 9.0, 9.0, 9.0], "diffalign_s": [5.0, 4.0, 4.0, 4.0]}]
    one, sweep = end_to_end.summarise(rounds)
    # one run: ratios 10/8 = 1.25, 12/12 = 1.0, 11/5 = 2.2; sweep: 37/20 = 1.85, 39/30 = 1.3, 38/17 ≈ 2.235
    assert one["what"] == "one run of one epoch" and one["speedup"] == 1.25 and one["range"] == "1.00–2.20"
    assert one["peer_s"] == 11.0 and one["diffalign_s"] == 8.0
    assert sweep["what"] == "sweep of 4 runs" and sweep["speedup"] == pytest.approx(1.85)
    assert sweep["range"] == "1.30–2.24" and sweep["peer_s"] == 38.0 and sweep["diffalign_s"] == 20.0


def test_a_partial_last_batch_is_refused():
    class Args:
        pairs, batch_size = 5, 2

    with pytest.raises(ValueError, match="--pairs 5 is not a whole number of batches of 2"):
        end_to_end.epoch_steps(Args)


def test_a_failing_command_names_its_output():
    with pytest.raises(RuntimeError, match="exit 3"):
        end_to_end.timed([sys.executable, "-c", "print('boom'); raise SystemExit(3)"])


@pytest.mark.slow
def test_one_round_converts_trains_and_runs_the_peer(tmp_path):
    """Tiny SDXL, 4 pairs, 2 runs; the peer is a stand-in script that records its arguments."""
    peer = tmp_path / "peer.py"
    # Parses --beta_dpo as the real script does (type=int) and records what it was given.
    peer.write_text("import sys, pathlib\nargv = sys.argv[1:]\nint(argv[argv.index('--beta_dpo') + 1])\n"
                    "out = pathlib.Path(argv[argv.index('--output_dir') + 1]); out.mkdir(parents=True)\n"
                    "(out / 'argv.txt').write_text(' '.join(argv))\n")
    table = end_to_end.end_to_end_table(["--batch-size", "2", "--pairs", "4", "--rounds", "1", "--peer-script", str(peer)],
                                        tmp_path / "out", "e2e", ["x"], runs=2)
    assert "| one run of one epoch |" in table and "| sweep of 2 runs |" in table
    report = (tmp_path / "out" / "e2e.json").read_text()
    assert '"diffalign_s"' in report and '"peer_s"' in report
