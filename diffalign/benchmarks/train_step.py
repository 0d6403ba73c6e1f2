"""Training-step benchmark: diffalign's trainer against diffusers' DPO SDXL script and a naive loop.

For one family × objective × {LoRA, full} × resolution it measures, for each set-up, the median
optimiser-step time over ``--steps`` steps after ``--warmup`` steps, pairs/s, and peak memory
(see :mod:`.measure`), then writes JSON and a Markdown table with the ratios to the peer script
first and to the naive loop second. The memory ratio is of allocated memory (CUDA
``max_memory_allocated``, on CPU the live-tensor peak); on CPU the RSS follows beside it
(:func:`.train_step_table.columns` says why it is not the headline).

Every set-up reads the same pairs: random-noise JPEGs written in Pick-a-Pic's Parquet columns
(what the peer script reads), converted by diffalign's ``build pick-a-pic`` for the others.

A round runs every set-up once, one after the other. With ``--lockstep`` each set-up instead runs
beside its own run of the peer, the two taking turns step by step (:mod:`.lockstep`), and its
ratio to the peer is against that run: on a shared machine whose speed drifts between minutes,
this keeps the drift out of the ratio.

The set-ups (``--setups``: the peer script, the naive loop, the trainer with its switches) and how
each is measured are in :mod:`.train_step_setups`; the ratios, rounds and columns of the table in
:mod:`.train_step_table`. This module prepares the model and data, runs the rounds and writes the
report.

One-off costs are paid before the rounds and listed under the table, not in the rows:

- the latent cache build (``cache_build_s``), once per dataset and resolution;
- the compiler's start-up (``compiler_startup_mib``): importing dynamo and inductor and probing
  the C++ toolchain, once per process whatever the model, as importing diffusers is;
- a compiled set-up's first compile from cold caches (``first_compile``), once per model and
  shape. Its rows then still trace and compile the model, from inductor's warm on-disk cache,
  as every later run of a user's does.

Models: the tiny pipelines of :mod:`diffalign.testing` by default, ``--model PATH`` for any
pipeline folder, or ``--size real`` for the published SD1.5/SDXL/SD3-Medium architectures with
random weights (:mod:`.real_size`; needs a GPU in practice).
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

from diffalign.benchmarks.measure import (BenchmarkError, check_counts, default_device, markdown_table, mib, pipeline_folder,
                                          release_memory, warm_up_compiler, write_report)
from diffalign.benchmarks.real_size import TINY_KIND
from diffalign.families import BENCHMARK_FAMILY
from diffalign.benchmarks.train_step_setups import (SETUPS, compiles, first_compile, paired_peer_row, run_diffalign,
                                                    run_naive, run_paired, run_peer_setup)
from diffalign.benchmarks.train_step_table import add_ratios, columns, combine_rounds, one_off_costs


# ---------------------------------------------------------------------------------- data
def prepare_data(args, work: Path) -> tuple[Path, Path]:
    """``(parquet folder, dataset folder)``: the pairs in Pick-a-Pic's columns (the peer reads
    them) and the same pairs converted by diffalign's Pick-a-Pic builder (the other set-ups)."""
    from diffalign.benchmarks.peer import write_pick_a_pic_parquet
    from diffalign.builders.pick_a_pic import build_pick_a_pic

    parquet = write_pick_a_pic_parquet(work / "pick_a_pic", args.pairs, args.resolution)
    build_pick_a_pic([str(parquet)], work / "data", progress=False)
    return parquet, work / "data"


def build_latent_cache(model: str, data: Path, resolution: int, device: str, use_t5: bool) -> float:
    """Build the latent cache the diffalign set-ups read; returns the seconds it took."""
    from diffalign.data.cache import build_cache
    from diffalign.families import load

    start = time.perf_counter()
    family = load(model, device=device, **({"use_t5": use_t5} if not use_t5 else {}))
    build_cache(data, family, resolution=resolution, progress=False)
    del family
    release_memory()
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------- command line
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks/train_step.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--family", choices=sorted(TINY_KIND), default=BENCHMARK_FAMILY, help="family of the tiny or real-size model")
    p.add_argument("--model", help="a diffusers pipeline folder (default: a tiny or real-size one built here)")
    p.add_argument("--size", choices=("tiny", "mini", "real"), default="tiny",
                   help="tiny: the unit tests' model; mini: SDXL at 1/8 width (CPU); "
                        "real: the published architecture with random weights (GPU)")
    p.add_argument("--objective", default="diffusion_dpo", help="the diffalign set-ups' objective")
    p.add_argument("--mode", choices=("lora", "full"), default="lora")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--resolution", type=int, default=None, help="pixels (default: 64 tiny, 1024 SDXL/SD3, 512 SD1.5)")
    p.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    p.add_argument("--pairs", type=int, default=None, help="dataset size (default: enough for every step)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--rounds", type=int, default=None,
                   help="times every set-up is run, back to back in turn (default: 3 on CPU, 1 on CUDA)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--setups", nargs="+", choices=SETUPS, default=["peer", "naive", "diffalign", "diffalign-uncached"])
    p.add_argument("--peer-script", default=None, metavar="PATH",
                   help="diffusers' examples/research_projects/diffusion_dpo/train_diffusion_dpo_sdxl.py, from your "
                        "diffusers checkout, for the peer set-up (skipped without it)")
    p.add_argument("--lockstep", action="store_true",
                   help="run every other set-up in lock-step with its own run of the peer: their steps alternate, so a "
                        "slow spell of a shared machine slows both, and its ratio is against that run (see lockstep.py)")
    p.add_argument("--memory-budget", type=float, default=0.95,
                   help="compile_memory_budget of the diffalign+compile+budget set-up (default 0.95)")
    p.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default=None,
                   help="default: bf16 on CUDA, no on CPU")
    p.add_argument("--optimizer", choices=("adamw", "adamw_8bit"), default="adamw")
    p.add_argument("--attention", choices=("sdpa", "xformers"), default="sdpa")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers of every set-up (default: the trainer's, 4 on CUDA and 0 on CPU)")
    p.add_argument("--no-t5", dest="use_t5", action="store_false", help="SD3: leave T5 out")
    p.add_argument("--no-tensor-memory", dest="tensor_memory", action="store_false",
                   help="CPU: skip the profiled second pass that measures peak live tensor memory")
    p.add_argument("--flops", action="store_true", help="count FLOPs of one step (TFLOP/s, and MFU with --peak-tflops)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's peak (default on a known GPU: its dense bf16 peak)")
    p.add_argument("--device", default=default_device())
    p.add_argument("--out", default="benchmarks/results", help="folder for train_step*.json/.md")
    p.add_argument("--name", default=None, help="report name (default: train_step-<family>-<size>-<mode>)")
    return p


def apply_defaults(args) -> None:
    from diffalign.benchmarks.real_size import DEFAULT_RESOLUTION, MINI_RESOLUTION, gpu_peak_tflops

    args.peer_skipped = None
    if args.mixed_precision is None:
        args.mixed_precision = "bf16" if args.device.startswith("cuda") else "no"
    if args.resolution is None:
        args.resolution = {"real": DEFAULT_RESOLUTION[args.family], "mini": MINI_RESOLUTION, "tiny": 64}[args.size]
    if args.rounds is None:
        args.rounds = 1 if args.device.startswith("cuda") else 3
    if args.pairs is None:
        args.pairs = args.batch_size * (args.warmup + args.steps + 2)
    if args.peak_tflops is None and args.device.startswith("cuda"):
        args.peak_tflops = gpu_peak_tflops(args.mixed_precision)
    if args.name is None:
        args.name = f"train_step-{args.family}-{args.size}-{args.mode}"


def prepare_model(args, work: Path) -> str:
    """The model folder the set-ups load."""
    if args.model:
        try:
            return str(pipeline_folder(args.model))
        except BenchmarkError as err:
            raise SystemExit(f"error: {err}") from err
    if args.size in ("real", "mini"):
        from diffalign.benchmarks.real_size import save_real_size_pipeline

        return str(save_real_size_pipeline(args.family, work / "model", use_t5=args.use_t5, size=args.size))
    from diffalign.testing import save_tiny_pipeline

    return str(save_tiny_pipeline(TINY_KIND[args.family], work / "model", with_t5=args.use_t5))


def run_round(args, model: str, parquet: Path, data: Path, r: int) -> list[dict]:
    """One row per set-up, in ``args.setups``' order; in lock-step each set-up takes turns with its
    own run of the peer, and the peer's row gathers those runs."""
    paired = args.lockstep and "peer" in args.setups
    rows, peer_runs = {}, []
    for setup in args.setups:
        if setup == "peer" and paired:
            continue
        print(f"[train_step] round {r + 1}/{args.rounds}: {setup}{' (in lock-step with the peer)' if paired else ''} ...",
              file=sys.stderr, flush=True)
        if setup == "peer":
            rows[setup] = run_peer_setup(args, model, parquet, r == 0)
        elif paired:
            rows[setup], peer_run = run_paired(args, model, parquet, data, setup, r == 0)
            peer_runs.append(peer_run)
        elif setup == "naive":
            rows[setup] = run_naive(args, model, data, r == 0)
        else:
            rows[setup] = run_diffalign(args, model, data, setup, r == 0)
    if paired:
        rows["peer"] = paired_peer_row(args, model, parquet, peer_runs, r == 0)
    return [rows[setup] for setup in args.setups]


def _measure(args) -> tuple[list[list[dict]], dict]:
    """Every round of every set-up, and the one-off costs (cache build, compiler start-up, first compiles)."""
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        model = prepare_model(args, work)
        parquet, data = prepare_data(args, work)
        cache_s = build_latent_cache(model, data, args.resolution, args.device, args.use_t5)
        extra = {"cache_build_s": cache_s}
        compiled = [setup for setup in args.setups if compiles(setup)]
        if compiled:
            extra["compiler_startup_mib"] = mib(warm_up_compiler(args.device))
            extra["first_compile"] = {}
        for setup in compiled:
            print(f"[train_step] first compile of {setup} (minutes on a few CPU cores) ...", file=sys.stderr, flush=True)
            extra["first_compile"][setup] = first_compile(args, model, data, setup)
        rounds = [add_ratios(run_round(args, model, parquet, data, r)) for r in range(args.rounds)]
    return rounds, extra


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    apply_defaults(args)
    try:
        check_counts(steps=args.steps, rounds=args.rounds, batch_size=args.batch_size)
    except BenchmarkError as err:
        raise SystemExit(f"error: {err}") from err
    if args.lockstep and args.warmup < 1:
        raise SystemExit("error: --lockstep needs --warmup 1 or more: the two runs' first steps overlap")
    from diffalign.benchmarks.peer import peer_skipped

    if "peer" in args.setups and (why := peer_skipped(args)) is not None:
        print(why, file=sys.stderr)
        args.setups = [s for s in args.setups if s != "peer"]
        args.peer_skipped = why
        if not args.setups:
            raise SystemExit(f"error: no set-up left to run ({why})")
    if ("naive" in args.setups or "peer" in args.setups) and args.objective != "diffusion_dpo":
        print("note: the peer and naive set-ups are Diffusion-DPO; ratios compare them with the diffalign objective "
              f"{args.objective!r}", file=sys.stderr)
    # What is alive now (modules, the caller's objects) is left out of every collection the
    # measurements run (`release_memory`, about 20 in a tiny run): each then scans only what the
    # benchmark made instead of the whole heap (0.3-0.6 s each; a tiny run: 32 s -> 26 s).
    gc.freeze()
    try:
        rounds, extra = _measure(args)
    finally:
        gc.unfreeze()
    rows = combine_rounds(rounds, args)
    table = markdown_table(rows, [c for c in columns(args.device) if any(r.get(c[0]) is not None for r in rows)])
    table += "\n" + one_off_costs(extra)
    if args.peer_skipped:
        table += f"- {args.peer_skipped}\n"
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "name")}
    write_report(args.out, args.name, {"settings": settings, **extra, "rows": rows},
                 table, "train_step.py", sys.argv[1:] if argv is None else list(argv))
    return 0
