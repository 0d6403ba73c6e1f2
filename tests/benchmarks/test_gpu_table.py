"""``gpu_table.py``: the GPU plan's train_step command lines, its table from hand-written rows, its
refusal without CUDA, and (slow) the whole plan run ``--reduced`` on the CPU."""

import json
import statistics
from types import SimpleNamespace

import pytest
import torch

from diffalign.benchmarks import gpu_table
from diffalign.benchmarks.train_step_table import add_ratios, combine_rounds
from stand_in_peer import FAKE_PEER as STAND_IN_PEER  # shared with test_train_step_benchmark.py


def _value(argv: list[str], option: str) -> str:
    return argv[argv.index(option) + 1]


def _setups(argv: list[str]) -> list[str]:
    start = argv.index("--setups") + 1
    end = next(i for i in range(start, len(argv)) if argv[i].startswith("--"))
    return argv[start:end]


def _table_rows(section: str) -> dict[str, list[str]]:
    """The table lines of one section of the written Markdown, by set-up: their cells."""
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] not in ("set-up",):
            rows[cells[0]] = cells[1:]
    return rows


def test_the_gpu_plan_is_real_size_bf16_at_rank_64_with_flops():
    args = gpu_table.parser().parse_args(["--peer-script", "/d/peer.py", "--out", "/r"])
    plans = {run.name: gpu_table.run_arguments(run, args) for run in gpu_table.GPU_RUNS}
    assert list(plans) == ["sdxl-lora", "sdxl-full", "sd3-lora", "sd3-full"]
    for name, argv in plans.items():
        family, mode = name.split("-")
        assert (_value(argv, "--family"), _value(argv, "--mode")) == (family, mode)
        assert _value(argv, "--size") == "real" and _value(argv, "--device") == "cuda"
        assert _value(argv, "--mixed-precision") == "bf16" and _value(argv, "--batch-size") == "1"
        assert "--flops" in argv and ("--no-t5" in argv) == (family == "sd3")
        assert (_value(argv, "--rounds"), _value(argv, "--warmup"), _value(argv, "--steps")) == ("3", "3", "10")
        assert ("--lora-rank" in argv) == (mode == "lora") and _value(argv, "--name") == f"gpu_table-{name}"
        assert _value(argv, "--out") == "/r" and "--peak-tflops" not in argv
    assert _setups(plans["sdxl-lora"]) == ["peer", "naive", "diffalign", "diffalign-uncached", "diffalign+regional"]
    assert _value(plans["sdxl-lora"], "--lora-rank") == "64" and _value(plans["sdxl-lora"], "--peer-script") == "/d/peer.py"
    for name in ("sdxl-full", "sd3-lora", "sd3-full"):
        # The peer trains SDXL with LoRA only: not asked for, nor given its script, elsewhere.
        assert _setups(plans[name]) == ["naive", "diffalign"] and "--peer-script" not in plans[name]


def test_the_reduced_plan_is_the_same_plan_tiny_on_the_cpu_for_one_step():
    args = gpu_table.parser().parse_args(["--reduced", "--peak-tflops", "2", "--steps", "2"])
    for run in gpu_table.GPU_RUNS:
        argv = gpu_table.run_arguments(run, args)
        assert (_value(argv, "--size"), _value(argv, "--device"), _value(argv, "--mixed-precision")) == ("tiny", "cpu", "no")
        assert (_value(argv, "--rounds"), _value(argv, "--warmup"), _value(argv, "--steps")) == ("1", "1", "2")
        assert _value(argv, "--peak-tflops") == "2.0" and "--peer-script" not in argv and "--no-tensor-memory" in argv
        assert _value(argv, "--name") == f"gpu_table-reduced-{run.name}" and _setups(argv) == list(run.setups)


def test_the_table_shows_train_steps_ratios_and_mfu_from_hand_written_rows():
    """Two rounds, one pair per step, a 1000 TFLOP/s peak. By hand: diffalign's pairs/s is 4.0 and
    5.0 against the peer's 2.0 → ratios 2.0 and 2.5, median 2.25; its steps 0.25, 0.25, 0.2 s →
    median 0.25 s = 4 pairs/s; 600 / 1000 MiB = 0.6; 1e14 FLOPs / 0.25 s = 400 TFLOP/s = 40 % MFU.
    Naive: 1 pair/s = 0.5× the peer, 1500 MiB = 1.5×."""
    def row(setup, times, peak, flops=None):
        return {"setup": setup, "step_times_s": times, "pairs_per_s": 1 / statistics.median(times),
                "peak_mib": peak, **({"flops_per_step": flops} if flops else {})}

    rounds = [add_ratios([row("peer", [0.5, 0.5], 1000), row("naive", [1.0, 1.0], 1500),
                          row("diffalign", [0.25, 0.25], 600, 1e14)]),
              add_ratios([row("peer", [0.5], 1000), row("naive", [1.0], 1500), row("diffalign", [0.2], 600, 1e14)])]
    rows = combine_rounds(rounds, SimpleNamespace(batch_size=1, peak_tflops=1000.0))
    table = gpu_table.run_table(rows)
    assert table.splitlines()[0] == ("| set-up | pairs/s | × peer pairs/s | peak allocated (MiB) | × peer allocated "
                                     "| TFLOP/s | MFU |")
    assert _table_rows(table) == {
        "peer": ["2.00", "1.00", "1000.0", "1.00", "", ""],
        "naive": ["1.00", "0.50 (0.50–0.50)", "1500.0", "1.50 (1.50–1.50)", "", ""],
        "diffalign": ["4.00", "2.25 (2.00–2.50)", "600.0", "0.60 (0.60–0.60)", "400", "40.0%"],
    }
    # Without a peer the ratios are to the naive loop; on CPU the allocated memory is the tensor peak.
    cpu = add_ratios([{**row("naive", [1.0], 900), "tensor_peak_mib": 40.0},
                      {**row("diffalign", [0.5], 700), "tensor_peak_mib": 10.0}])
    assert _table_rows(gpu_table.run_table(cpu)) == {"naive": ["1.00", "1.00", "40.0", "1.00", "", ""],
                                                     "diffalign": ["2.00", "2.00", "10.0", "0.25", "", ""]}
    assert "| × naive pairs/s | peak allocated (MiB) | × naive allocated |" in gpu_table.run_table(cpu)
    # --reduced leaves the tensor pass out: its CPU memory is the RSS increase, and says so.
    rss = add_ratios([{**row("naive", [1.0], 900), "memory_kind": "peak RSS increase"},
                      {**row("diffalign", [0.5], 450), "memory_kind": "peak RSS increase"}])
    assert "| peak RSS (MiB) | × naive RSS |" in gpu_table.run_table(rss)
    assert _table_rows(gpu_table.run_table(rss))["diffalign"][2:4] == ["450.0", "0.50"]


def test_a_failed_run_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    """Out of memory in one run (full SDXL is the likeliest) costs that run only; exit status 1."""
    runs = []

    def fake_train_step(argv):
        runs.append(_value(argv, "--name"))
        if _value(argv, "--family") == "sdxl" and _value(argv, "--mode") == "full":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB\nmore detail")
        settings = {"resolution": 64, "size": "tiny", "rounds": 1, "warmup": 1, "steps": 1, "peak_tflops": None,
                    "peer_skipped": None}
        rows = [{"setup": s, "pairs_per_s": 2.0, "peak_mib": 10.0, "speedup_naive": 1.0} for s in _setups(argv)]
        (tmp_path / f"{_value(argv, '--name')}.json").write_text(json.dumps(
            {"settings": settings, "cache_build_s": 0.5, "rows": rows}))

    monkeypatch.setattr(gpu_table, "train_step_main", fake_train_step)
    assert gpu_table.table_main(["--reduced", "--out", str(tmp_path)]) == 1
    assert runs == [f"gpu_table-reduced-{name}" for name in ("sdxl-lora", "sdxl-full", "sd3-lora", "sd3-full")]
    text = (tmp_path / "gpu_table-reduced.md").read_text()
    assert ("### SDXL, full fine-tuning\n\nFailed:\n\n```\nOutOfMemoryError: CUDA out of memory. Tried to allocate "
            "20.00 MiB\nmore detail\n```\n") in text
    assert text.count("| diffalign | 2.00 |") == 3


def test_without_cuda_it_refuses_and_points_at_reduced(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_table, "train_step_main", lambda argv: pytest.fail("nothing may run"))
    with pytest.raises(SystemExit, match="needs a CUDA device and none is visible; --reduced"):
        gpu_table.table_main(["--peer-script", "/d/peer.py", "--out", str(tmp_path)])
    # On a GPU, the peer's script is required: the table is against it.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(SystemExit, match="pass --peer-script"):
        gpu_table.table_main(["--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())




@pytest.mark.slow
def test_the_reduced_plan_runs_end_to_end_on_the_cpu(tmp_path):
    """The whole plan, tiny, with a stand-in for the peer script (its ``parse_args``/``main``
    shape; the real one's run is train_step's to test)."""
    peer = tmp_path / "train_diffusion_dpo_sdxl.py"
    peer.write_text(STAND_IN_PEER)
    out = tmp_path / "out"
    assert gpu_table.table_main(["--reduced", "--peer-script", str(peer), "--peak-tflops", "1", "--out", str(out)]) == 0
    text = (out / "gpu_table-reduced.md").read_text()
    assert text.startswith("Command: `python benchmarks/gpu_table.py --reduced --peer-script")
    assert "- device: cpu (--reduced" in text and f"torch {torch.__version__}" in text and "MFU against 1 TFLOP/s" in text
    sections = text.split("\n### ")[1:]
    assert [s.split("\n")[0] for s in sections] == [
        "SDXL, LoRA rank 64, 64 px (tiny size)", "SDXL, full fine-tuning, 64 px (tiny size)",
        "SD3-Medium (without T5), LoRA rank 64, 64 px (tiny size)", "SD3-Medium (without T5), full fine-tuning, 64 px (tiny size)"]
    for section, run in zip(sections, gpu_table.GPU_RUNS):
        report = json.loads((out / f"gpu_table-reduced-{run.name}.json").read_text())
        base = "peer" if run.name == "sdxl-lora" else "naive"
        assert f"| × {base} pairs/s | peak RSS (MiB) | × {base} RSS |" in section and (run.no_peer is None) == (base == "peer")
        rows = _table_rows(section)
        assert list(rows) == list(run.setups)
        assert rows[base][1] == "1.00" and rows[base][3] == "1.00"
        for row in report["rows"]:
            cells = rows[row["setup"]]
            assert cells[0] == f"{row['pairs_per_s']:.2f}" and cells[2] == f"{row['peak_mib']:.1f}"
            # Every set-up but the peer (a child process) counts its FLOPs: MFU against the given peak.
            assert (cells[5] == "") == (row["setup"] == "peer")
            if row["setup"] != "peer":
                assert cells[5] == f"{row['tflops_per_s'] / 1:.1%}"
