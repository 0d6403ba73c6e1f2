"""``python benchmarks/gpu_table.py --peer-script PATH``: the GPU table of issue 37, one command.

On a CUDA machine it runs :mod:`.train_step` on the published architectures with random weights
(``--size real``, :mod:`.real_size`) at 1024 px, bf16, one pair per step, the trainer's default
switches, and FLOPs counted (:data:`GPU_RUNS`):

- SDXL with LoRA (rank 64): the peer script (:mod:`.peer`), the naive loop, diffalign cached and
  uncached;
- SDXL with full fine-tuning: the naive loop and diffalign (the peer script trains LoRA only);
- SD3-Medium with LoRA and with full fine-tuning: the naive loop and diffalign (no peer script
  exists for SD3; T5 left out, as in :func:`.real_size.components`'s default).

Each run is one :mod:`.train_step` report (``gpu_table-<run>.json/.md``); this module gathers
their rows into ``gpu_table.md``: per set-up pairs/s, its ratio to the peer (to the naive loop
where no peer ran), peak allocated memory and its ratio, TFLOP/s and MFU, under a header with
the command, the date, the GPU and the library versions.

``--reduced`` runs the same plan on the CPU at the tiny size, in fp32, one round of one warm-up
and one timed step: it tests the plan's wiring, it measures nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from diffalign.benchmarks.peer import PEER_PIPELINE, PEER_SCRIPT
from diffalign.benchmarks.train_step import main as train_step_main

LORA_RANK = 64


def family_of(pipeline_class: str) -> str:
    """The name of the family that trains ``pipeline_class`` (family names live in
    :mod:`diffalign.families`; the plan names the pipelines it measures)."""
    from diffalign.families import FAMILIES

    return next(name for name, family in FAMILIES.items() if family.pipeline_class == pipeline_class)


SDXL, SD3 = family_of(PEER_PIPELINE), family_of("StableDiffusion3Pipeline")
"""The LoRA rank of the GPU runs: what the README's GPU commands used, a common SDXL rank."""
BATCH_SIZE = 1
"""Pairs per step, as in the README's earlier GPU commands; the same for every set-up, the peer's included."""


@dataclass(frozen=True)
class Run:
    """One :mod:`.train_step` run of the plan: a family and mode, its set-ups, and why the
    ratios are not to the peer where they are not."""

    name: str
    title: str
    family: str
    mode: str
    setups: tuple[str, ...]
    no_peer: str | None = None


GPU_RUNS = (
    # +regional: its first compile and step against the eager default's decide compile: auto's
    # threshold (training/setup.py: COMPILE_PAYS_AFTER) on a GPU, where it is arithmetic until then.
    Run("sdxl-lora", f"SDXL, LoRA rank {LORA_RANK}", SDXL, "lora",
        ("peer", "naive", "diffalign", "diffalign-uncached", "diffalign+regional")),
    Run("sdxl-full", "SDXL, full fine-tuning", SDXL, "full", ("naive", "diffalign"),
        "the peer script trains LoRA only, so this run has no peer: ratios are to the naive loop"),
    Run("sd3-lora", f"SD3-Medium (without T5), LoRA rank {LORA_RANK}", SD3, "lora", ("naive", "diffalign"),
        "no peer script exists for SD3 (diffusers' DPO script trains SDXL): ratios are to the naive loop"),
    Run("sd3-full", "SD3-Medium (without T5), full fine-tuning", SD3, "full", ("naive", "diffalign"),
        "no peer script exists for SD3 (diffusers' DPO script trains SDXL): ratios are to the naive loop"),
)
RUNS = {run.name: run for run in GPU_RUNS}
# --reduced: one round of one warm-up and one timed step, enough to run every line of the plan.
REDUCED_COUNTS = {"rounds": 1, "warmup": 1, "steps": 1}
GPU_COUNTS = {"rounds": 3, "warmup": 3, "steps": 10}


def parser() -> argparse.ArgumentParser:
    """The command line of ``benchmarks/gpu_table.py``."""
    p = argparse.ArgumentParser(prog="benchmarks/gpu_table.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--peer-script", default=None, metavar="PATH",
                   help=f"DIFFUSERS/{PEER_SCRIPT} (required on the GPU; with --reduced the peer is skipped without it)")
    p.add_argument("--out", default="benchmarks/results", help="folder for the reports")
    p.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS), help="a part of the plan only")
    p.add_argument("--rounds", type=int, default=None, help="default: 3 (GPU), 1 (--reduced)")
    p.add_argument("--steps", type=int, default=None, help="timed steps; default: 10 (GPU), 1 (--reduced)")
    p.add_argument("--warmup", type=int, default=None, help="default: 3 (GPU), 1 (--reduced)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's peak for MFU (default on H100, H200 and A100: the dense bf16 peak)")
    p.add_argument("--reduced", action="store_true",
                   help="the same plan on the CPU, tiny models, fp32, 1 round of 1 step: tests the wiring, measures nothing")
    return p


def check_device(args) -> None:
    """Refuse, saying what to do instead, when the plan cannot run as asked."""
    import torch

    if args.reduced:
        return
    if not torch.cuda.is_available():
        raise SystemExit("error: the GPU table needs a CUDA device and none is visible; --reduced runs the same "
                         "plan on the CPU at the tiny size, to test its wiring (it measures nothing)")
    if args.peer_script is None and any("peer" in RUNS[name].setups for name in args.runs):
        raise SystemExit(f"error: the GPU table is against the peer: pass --peer-script DIFFUSERS/{PEER_SCRIPT}")


def report_name(run: Run, reduced: bool) -> str:
    """The :mod:`.train_step` report's name; a reduced run's differ, so it never stands for a GPU one."""
    return f"gpu_table-{'reduced-' if reduced else ''}{run.name}"


def run_arguments(run: Run, args) -> list[str]:
    """The :mod:`.train_step` command line of one run of the plan."""
    counts = REDUCED_COUNTS if args.reduced else GPU_COUNTS
    argv = ["--family", run.family, "--mode", run.mode, "--batch-size", str(BATCH_SIZE), "--flops",
            "--setups", *run.setups]
    if run.mode == "lora":
        argv += ["--lora-rank", str(LORA_RANK)]
    if run.family == SD3:
        argv.append("--no-t5")
    if "peer" in run.setups and args.peer_script is not None:
        argv += ["--peer-script", str(args.peer_script)]
    if args.reduced:
        # The CPU's profiled tensor-memory pass is left out: the GPU path has none, and it would
        # double the reduced plan's time for a number that means nothing here.
        argv += ["--size", "tiny", "--device", "cpu", "--mixed-precision", "no", "--no-tensor-memory"]
    else:
        argv += ["--size", "real", "--device", "cuda", "--mixed-precision", "bf16"]
    for key, default in counts.items():
        value = getattr(args, key)
        argv += [f"--{key}", str(default if value is None else value)]
    if args.peak_tflops is not None:
        argv += ["--peak-tflops", str(args.peak_tflops)]
    return [*argv, "--out", str(args.out), "--name", report_name(run, args.reduced)]


def baseline(rows: list[dict]) -> str | None:
    """What a run's ratios are against: the peer where it ran, else the naive loop (``None``: neither)."""
    for base in ("peer", "naive"):
        if any(row["setup"] == base for row in rows):
            return base
    return None


def memory_keys(row: dict) -> tuple[str, str, str]:
    """``(peak, ratio prefix, what it is)`` of a row's memory: allocated memory, CUDA's
    ``max_memory_allocated`` (``peak_mib``) or on CPU its counterpart, the live-tensor peak; on
    CPU without the tensor pass (``--reduced``) only the RSS increase, and it says so."""
    if row.get("tensor_peak_mib") is not None:
        return "tensor_peak_mib", "tensor_memory_ratio", "allocated"
    return "peak_mib", "memory_ratio", "allocated" if row.get("memory_kind", "cuda").startswith("cuda") else "RSS"


def _number(value, fmt: str, spread: str | None = None) -> str:
    """A cell: ``value`` formatted, its range over rounds beside it; empty when not measured."""
    if value is None:
        return ""
    return format(value, fmt) + (f" ({spread})" if spread else "")


def run_table(rows: list[dict]) -> str:
    """One run's Markdown table from :mod:`.train_step`'s rows (their ratios are the medians over
    rounds of each round's ratio, :func:`.train_step_table.combine_rounds`; reused, not redone)."""
    base, memory = baseline(rows), memory_keys(rows[0])[2]
    lines = [f"| set-up | pairs/s | × {base} pairs/s | peak {memory} (MiB) | × {base} {memory} | TFLOP/s | MFU |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        peak, ratio, _ = memory_keys(row)
        cells = [row["setup"], _number(row["pairs_per_s"], ".2f"),
                 _number(row.get(f"speedup_{base}"), ".2f", row.get(f"speedup_{base}_range")),
                 _number(row[peak], ".1f"), _number(row.get(f"{ratio}_{base}"), ".2f", row.get(f"{ratio}_{base}_range")),
                 _number(row.get("tflops_per_s"), ".3g"), _number(row.get("mfu"), ".1%")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_section(run: Run, report: dict | None, failure: str | None = None) -> str:
    """A run's part of ``gpu_table.md``: its title, why its ratios are not to the peer (if they
    are not), its table or why it failed, and the notes :mod:`.train_step` wrote."""
    if failure is not None:
        return f"### {run.title}\n\nFailed:\n\n```\n{failure}\n```\n\n"
    settings = report["settings"]
    lines = [f"### {run.title}, {settings['resolution']} px ({settings['size']} size)", ""]
    if run.no_peer:
        lines.append(f"- {run.no_peer}.")
    if settings.get("peer_skipped"):
        lines.append(f"- {settings['peer_skipped']}: ratios are to the naive loop.")
    lines.append(f"- rounds: {settings['rounds']}, each of {settings['warmup']} warm-up and {settings['steps']} timed "
                 f"step(s); the ratios are the median over rounds of each round's ratio (range beside it); "
                 f"latent cache build {report['cache_build_s']:.1f} s, kept out of the rows.")
    return "\n".join(lines) + "\n\n" + run_table(report["rows"]) + "\n"


def header(argv: list[str], reports: list[dict], reduced: bool) -> str:
    """The command, date, device, versions and the peak MFU is taken against."""
    from diffalign.benchmarks.measure import environment

    env = environment()
    peak = next((r["settings"]["peak_tflops"] for r in reports if r["settings"].get("peak_tflops")), None)
    lines = [f"Command: `{shlex.join(['python', 'benchmarks/gpu_table.py', *argv])}`", "",
             f"- date: {datetime.date.today().isoformat()}",
             f"- device: {env['device']}" + ("" if not reduced else " (--reduced: tiny models on the CPU, fp32; "
                                                                       "it tests the plan's wiring, the numbers mean nothing)"),
             f"- torch {env['torch']}, diffusers {env.get('diffusers', 'not installed')}, python {env['python']}",
             f"- MFU against {peak:g} TFLOP/s" if peak else "- MFU: not computed (no known peak; pass --peak-tflops)",
             "- memory: " + ("the CPU's RSS increase" if reduced else "CUDA max_memory_allocated")
             + f"; {BATCH_SIZE} pair per step; the trainer's default switches", ""]
    return "\n".join(lines) + "\n"


def run_plan(args) -> tuple[list[str], list[dict], bool]:
    """Run each :class:`Run` of ``args.runs`` in turn; one that fails (out of memory, the peer
    script failing) is reported in its section and the others still run."""
    from diffalign.benchmarks.measure import release_memory

    sections, reports, failed = [], [], False
    for name in args.runs:
        run = RUNS[name]
        print(f"[gpu_table] {run.title} ...", file=sys.stderr, flush=True)
        failure = None
        try:
            train_step_main(run_arguments(run, args))
        except Exception as err:  # one run's failure (out of memory) must not cost the others' GPU time
            # The whole message: the peer's failure carries the tail of the script's output.
            failure = f"{type(err).__name__}: {err}".strip()
        if failure is not None:
            # Out here, not in the except block: there the traceback's frames still hold the tensors.
            release_memory()
            sections.append(run_section(run, None, failure))
            failed = True
            continue
        report = json.loads((Path(args.out) / f"{report_name(run, args.reduced)}.json").read_text())
        reports.append(report)
        sections.append(run_section(run, report))
    return sections, reports, failed


def table_main(argv: list[str] | None = None) -> int:
    """``python benchmarks/gpu_table.py``: run the plan, print the table and write it to
    ``<out>/gpu_table.md`` (``gpu_table-reduced.md`` with ``--reduced``). Exit status 1 when a
    run failed."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    check_device(args)
    sections, reports, failed = run_plan(args)
    text = header(argv, reports, args.reduced) + "\n".join(sections)
    path = Path(args.out) / f"gpu_table{'-reduced' if args.reduced else ''}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
    print(f"wrote {path}")
    return 1 if failed else 0
