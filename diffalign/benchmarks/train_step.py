"""Training-step benchmark: diffalign's trainer against diffusers' DPO SDXL script and a naive loop.

For one family × objective × {LoRA, full} × resolution it measures, for each set-up, the median
optimiser-step time over ``--steps`` steps after ``--warmup`` steps, pairs/s, and peak memory
(see :mod:`.measure`), then writes JSON and a Markdown table with the ratios to the peer script
first and to the naive loop second. The memory ratio is of allocated memory (CUDA
``max_memory_allocated``, on CPU the live-tensor peak); on CPU the RSS follows beside it
(:func:`columns` says why it is not the headline).

Every set-up reads the same pairs: random-noise JPEGs written in Pick-a-Pic's Parquet columns
(what the peer script reads), converted by diffalign's ``build pick-a-pic`` for the others.

Set-ups (``--setups``):

- ``peer``: diffusers' ``train_diffusion_dpo_sdxl.py`` itself, given by ``--peer-script`` and run
  in a child process (:mod:`.peer`); skipped, with a message, when no script is given;
- ``naive``: :class:`~diffalign.benchmarks.naive.NaiveDPO` (VAE and text encoders every step,
  preferred and rejected in separate forwards, a second full copy as reference);
- ``diffalign``: the real :class:`~diffalign.training.Trainer` with the default config: the latent
  cache (``data.cache: auto``, built before the rounds), one forward per group and the
  LoRA-disabled reference (a frozen copy under full fine-tuning);
- ``diffalign-uncached``: the same with ``data.cache: false`` (VAE and text encoders every step);
- ``diffalign+ckpt``: the same with gradient checkpointing;
- ``diffalign+nolean``: the same with ``lean_layers: false`` (PyTorch's and diffusers' own layers);
- ``diffalign+regional``: the same with ``compile: regional`` (the repeated blocks compiled);
- ``diffalign+compile``: the same with ``torch.compile`` of the whole model;
- ``diffalign+ckpt+compile``: both switches;
- ``diffalign+compile+budget``: ``torch.compile`` with ``compile_memory_budget``
  (``--memory-budget``, default 0.95): the compiler recomputes what it must to keep that
  fraction of the activations, instead of checkpointing every block.

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
import statistics
import sys
import tempfile
import time
from pathlib import Path

from diffalign.benchmarks.measure import (BenchmarkError, PeakMemory, StepTimer, check_counts, default_device, markdown_table, mib,
                                          pipeline_folder, release_memory, warm_up_compiler, write_report)
from diffalign.benchmarks.real_size import TINY_KIND

SETUPS = ("peer", "naive", "diffalign", "diffalign-uncached", "diffalign+nolean", "diffalign-uncached+nolean",
          "diffalign+regional", "diffalign-uncached+regional",
          "diffalign+ckpt", "diffalign+compile", "diffalign+ckpt+compile", "diffalign+compile+budget")
# The tensor-memory pass: the first step allocates the optimiser's state, the second is a steady one.
MEMORY_PASS_STEPS = 2
BASELINES = ("peer", "naive")
"""What the ratios are against, the table's first ratio columns first."""


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


# ---------------------------------------------------------------------------------- set-ups
def run_peer_setup(args, model: str, parquet: Path, first_round: bool = True) -> dict:
    """Time the peer script in a child process (:mod:`.peer`); on CPU its first round also runs
    the profiled two-step pass for the live-tensor peak, as the other set-ups do."""
    from diffalign.benchmarks.peer import run_peer

    timed = run_peer(args, model, parquet, "peak", args.warmup + args.steps)
    timer = StepTimer(args.device, warmup=args.warmup, times=timed["step_times_s"])
    tensors = None
    if first_round and args.tensor_memory and not args.device.startswith("cuda"):
        tensors = run_peer(args, model, parquet, "tensor", MEMORY_PASS_STEPS)["peak_bytes"]
    return _result("peer", args, timer, timed["peak_bytes"], PeakMemory(args.device).kind, None, tensors)


def make_naive(args, model: str, data: Path):
    from diffalign.benchmarks.naive import NaiveDPO

    return NaiveDPO(model, str(data), resolution=args.resolution, batch_size=args.batch_size,
                    lora_rank=args.lora_rank if args.mode == "lora" else None, lr=args.lr,
                    mixed_precision=args.mixed_precision, device=args.device, workers=args.workers)


def run_naive(args, model: str, data: Path, first_round: bool = True) -> dict:
    """Time the naive loop; peak memory covers loading it and its steps. FLOPs and the tensor
    memory pass (deterministic) are measured in the first round only."""
    timer = StepTimer(args.device, warmup=args.warmup)
    with PeakMemory(args.device) as mem:
        naive = make_naive(args, model, data)
        timer.tick()
        for _ in range(args.warmup + args.steps):
            naive.step()
            timer.tick()
        flops = _count_flops(lambda: naive.compute_loss(naive._next_batch()).backward()) if args.flops and first_round else None
        naive.optimizer.zero_grad(set_to_none=True)
        naive = None  # freed before the memory pass builds its own
    release_memory()

    def memory_pass():
        naive = make_naive(args, model, data)
        for _ in range(MEMORY_PASS_STEPS):
            naive.step()

    tensors = _tensor_peak(args, "naive", memory_pass) if first_round else None
    return _result("naive", args, timer, mem.peak_bytes, mem.kind, flops, tensors)


def diffalign_config(args, model: str, data: Path, out: Path, setup: str, steps: int | None = None):
    """The :class:`~diffalign.config.TrainConfig` of a diffalign set-up (``steps``: default warm-up + timed)."""
    from diffalign.config import TrainConfig, from_dict

    raw = {
        "model": {"path": model, "use_t5": args.use_t5, "attention": args.attention},
        "data": {"path": str(data), "resolution": args.resolution, "cache": False if setup.startswith("diffalign-uncached") else "auto",
                 "workers": args.workers},
        "objective": {"name": args.objective},
        "lora": {"rank": args.lora_rank, "alpha": args.lora_rank} if args.mode == "lora" else None,
        "optim": {"lr": args.lr, "lr_scheduler": "constant", "optimizer": args.optimizer},
        "batch_size": args.batch_size,
        "max_steps": steps or args.warmup + args.steps,
        "mixed_precision": args.mixed_precision,
        "gradient_checkpointing": "+ckpt" in setup,
        "lean_layers": "+nolean" not in setup,
        "compile": "regional" if "+regional" in setup else "+compile" in setup,
        "compile_memory_budget": args.memory_budget if setup.endswith("+budget") else None,
        "checkpoint_every": 0,
        "output_dir": str(out),
        "logging": {"report_to": "none", "progress_bar": False},
    }
    return from_dict(TrainConfig, raw, source=f"benchmark set-up {setup}")


def run_diffalign(args, model: str, data: Path, setup: str, first_round: bool = True) -> dict:
    """Time the real trainer (its own loop, data loader and logging) through its ``on_step`` hook."""
    from diffalign.training import Trainer

    timer = StepTimer(args.device, warmup=args.warmup)
    forget_compiled(setup)
    with tempfile.TemporaryDirectory() as out, PeakMemory(args.device) as mem:
        trainer = Trainer(diffalign_config(args, model, data, Path(out), setup))
        timer.tick()
        trainer.run(on_step=lambda step, _: timer.tick())
        flops = (_count_flops(lambda: trainer.compute_loss(next(iter(trainer.loader))).loss.backward())
                 if args.flops and first_round else None)
        trainer.accelerator.free_memory()
        trainer = None
    release_memory()

    tensors = _tensor_peak(args, setup, lambda: short_run(args, model, data, setup)) if first_round else None
    return _result(setup, args, timer, mem.peak_bytes, mem.kind, flops, tensors)


def short_run(args, model: str, data: Path, setup: str) -> None:
    """Load a diffalign set-up and train it for ``MEMORY_PASS_STEPS`` steps (the tensor-memory
    pass and the first compile): the first step allocates the optimiser's state and compiles,
    the second is a steady one."""
    from diffalign.training import Trainer

    with tempfile.TemporaryDirectory() as out:
        Trainer(diffalign_config(args, model, data, Path(out), setup, steps=MEMORY_PASS_STEPS)).run()


def compiles(setup: str) -> bool:
    """Whether a set-up's name turns ``compile`` on (``+compile``, or ``+regional``)."""
    return "+compile" in setup or "+regional" in setup


def forget_compiled(setup: str) -> None:
    """Before a compiled set-up: drop the graphs dynamo holds in memory. Its guards do not check
    which module instance runs, so a new trainer's UNet would reuse the previous set-up's graphs
    (compiled under other settings, e.g. another memory budget) instead of compiling its own."""
    if compiles(setup):
        import torch

        torch._dynamo.reset()
        release_memory()


def first_compile(args, model: str, data: Path, setup: str) -> dict:
    """Train a compiled set-up for two steps before the rounds, and return its seconds and peak
    memory (``{"seconds", "peak_mib"}``), reported beside the table.

    Compiling a model from cold caches is a one-off per model and shape, as building the latent
    cache is per dataset: afterwards inductor's on-disk cache holds the kernels, and a later run
    only traces the model again. Paying it here makes every round measure that warm compile, so
    the rounds are alike; a first run's cost is not hidden but shown on its own line.
    """
    forget_compiled(setup)
    start = time.perf_counter()
    with PeakMemory(args.device) as mem:
        short_run(args, model, data, setup)
    release_memory()
    return {"seconds": time.perf_counter() - start, "peak_mib": mib(mem.peak_bytes)}


def _tensor_peak(args, setup: str, memory_pass) -> int | None:
    """Peak live tensor bytes of a second, profiled pass of a set-up (load and two steps), on CPU
    (CUDA's ``max_memory_allocated`` already counts tensors). ``None`` when not measured: on
    CUDA and with ``--no-tensor-memory``."""
    from diffalign.benchmarks.measure import TensorMemory

    if not args.tensor_memory or args.device.startswith("cuda"):
        return None
    forget_compiled(setup)
    with TensorMemory() as mem:
        memory_pass()
    release_memory()
    return mem.peak_bytes


def _count_flops(step) -> int:
    """FLOPs of one forward+backward (``torch.utils.flop_counter``; matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def _result(setup: str, args, timer: StepTimer, peak_bytes: int, memory_kind: str, flops: int | None,
            tensor_bytes: int | None) -> dict:
    step_s = timer.median_s
    row = {"setup": setup, "median_step_s": step_s, "pairs_per_s": args.batch_size / step_s,
           "peak_mib": mib(peak_bytes), "memory_kind": memory_kind, "step_times_s": timer.times}
    if tensor_bytes is not None:
        row["tensor_peak_mib"] = mib(tensor_bytes)
    if flops is not None:
        row["flops_per_step"] = flops
    return row


def add_ratios(rows: list[dict]) -> list[dict]:
    """Each row's ratios to each baseline present (:data:`BASELINES`): ``speedup_<base>``
    (pairs/s ÷ the baseline's), ``memory_ratio_<base>`` (peak ÷ the baseline's) and, on CPU,
    ``tensor_memory_ratio_<base>``."""
    for base in BASELINES:
        ref = next((r for r in rows if r["setup"] == base), None)
        if ref is None:
            continue
        for row in rows:
            row[f"speedup_{base}"] = row["pairs_per_s"] / ref["pairs_per_s"]
            row[f"memory_ratio_{base}"] = row["peak_mib"] / ref["peak_mib"] if ref["peak_mib"] > 0 else None
            if row.get("tensor_peak_mib") is not None and ref.get("tensor_peak_mib"):
                row[f"tensor_memory_ratio_{base}"] = row["tensor_peak_mib"] / ref["tensor_peak_mib"]
    return rows


def combine_rounds(rounds: list[list[dict]], args) -> list[dict]:
    """One row per set-up from ``rounds`` (each a list of rows, one per set-up, with ratios).

    A round runs every set-up back to back, so a slow spell of the machine (on the shared 2-core
    machine, whole runs differed by 25 %) hits both sides of a ratio: ``speedup_<base>`` and
    ``memory_ratio_<base>`` are the medians over rounds of each round's ratio, with the range
    beside them. Step time is the median of every timed step of every round; peak RSS the median over
    rounds; FLOPs and tensor memory come from the first round.
    """
    combined = []
    for i, first in enumerate(rounds[0]):
        per_round = [r[i] for r in rounds]
        times = [t for row in per_round for t in row["step_times_s"]]
        row = {**first, "rounds": len(per_round), "step_times_s": times,
               "round_step_times_s": [row["step_times_s"] for row in per_round],
               "round_peak_mib": [row["peak_mib"] for row in per_round],
               "median_step_s": statistics.median(times), "peak_mib": statistics.median(r["peak_mib"] for r in per_round)}
        row["pairs_per_s"] = args.batch_size / row["median_step_s"]
        for base in BASELINES:
            for key in (f"speedup_{base}", f"memory_ratio_{base}"):
                values = [r[key] for r in per_round if r.get(key) is not None]
                if values:
                    row[key] = statistics.median(values)
                    spread = len(values) > 1 and first["setup"] != base  # a baseline's own ratios are all 1
                    row[f"{key}_range"] = f"{min(values):.2f}–{max(values):.2f}" if spread else None
        if row.get("flops_per_step") is not None:
            row["tflops_per_s"] = row["flops_per_step"] / row["median_step_s"] / 1e12
            if args.peak_tflops:
                row["mfu"] = row["tflops_per_s"] / args.peak_tflops
        combined.append(row)
    return combined


def columns(device: str) -> list[tuple[str, str, str]]:
    """The table's ``(key, header, format)`` columns: the ratios to the peer script first, to the
    naive loop second (the caller drops columns no row has).

    The memory the ratios are judged by is *allocated* memory: CUDA's ``max_memory_allocated``,
    and on CPU its counterpart, the peak of live tensor bytes (:class:`.measure.TensorMemory`).
    On CPU the RSS increase follows beside it. It is not the headline because it counts what
    glibc's heap keeps, as CUDA's *reserved* memory counts what the caching allocator keeps:
    on the tiny SDXL the heap's top reached 1.5–2.2× the bytes in use (``mallinfo2``), and a
    compiled set-up's RSS also holds the host memory of tracing the model.
    """
    speed = [("setup", "set-up", ""), ("median_step_s", "step (s)", ".4f"), ("pairs_per_s", "pairs/s", ".2f")]
    for base in BASELINES:
        speed += [(f"speedup_{base}", f"× {base} pairs/s", ".2f"), (f"speedup_{base}_range", "range", "")]
    flops = [("tflops_per_s", "TFLOP/s", ".3g"), ("mfu", "MFU", ".1%")]
    if device.startswith("cuda"):
        memory = [("peak_mib", "peak allocated (MiB)", ".1f")]
        for base in BASELINES:
            memory += [(f"memory_ratio_{base}", f"× {base} allocated", ".2f"), (f"memory_ratio_{base}_range", "range", "")]
        return speed + memory + flops
    memory = [("tensor_peak_mib", "peak allocated (MiB)", ".1f")]
    memory += [(f"tensor_memory_ratio_{base}", f"× {base} allocated", ".2f") for base in BASELINES]
    memory += [("peak_mib", "peak RSS (MiB)", ".1f")]
    for base in BASELINES:
        memory += [(f"memory_ratio_{base}", f"× {base} RSS", ".2f"), (f"memory_ratio_{base}_range", "range", "")]
    return speed + memory + flops


def one_off_costs(extra: dict) -> str:
    """The costs paid once and kept out of the rows, as Markdown lines under the table."""
    lines = [f"- latent cache build (once per dataset and resolution): {extra['cache_build_s']:.1f} s"]
    if "compiler_startup_mib" in extra:
        lines.append(f"- compiler start-up (once per process): {extra['compiler_startup_mib']:.0f} MiB")
    for setup, cost in extra.get("first_compile", {}).items():
        lines.append(f"- first compile of {setup} (once per model and shape; its rows then compile from a warm cache): "
                     f"{cost['seconds']:.0f} s, peak memory {cost['peak_mib']:.1f} MiB")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- command line
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks/train_step.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--family", choices=sorted(TINY_KIND), default="sdxl", help="family of the tiny or real-size model")
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


def _defaults(args) -> None:
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


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _defaults(args)
    try:
        check_counts(steps=args.steps, rounds=args.rounds, batch_size=args.batch_size)
    except BenchmarkError as err:
        raise SystemExit(f"error: {err}") from err
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
        rounds = []
        for r in range(args.rounds):
            rows = []
            for setup in args.setups:
                print(f"[train_step] round {r + 1}/{args.rounds}: {setup} ...", file=sys.stderr, flush=True)
                if setup == "peer":
                    rows.append(run_peer_setup(args, model, parquet, r == 0))
                elif setup == "naive":
                    rows.append(run_naive(args, model, data, r == 0))
                else:
                    rows.append(run_diffalign(args, model, data, setup, r == 0))
            rounds.append(add_ratios(rows))
    rows = combine_rounds(rounds, args)
    table = markdown_table(rows, [c for c in columns(args.device) if any(r.get(c[0]) is not None for r in rows)])
    table += "\n" + one_off_costs(extra)
    if args.peer_skipped:
        table += f"- {args.peer_skipped}\n"
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "name")}
    write_report(args.out, args.name, {"settings": settings, **extra, "rows": rows},
                 table, "train_step.py", sys.argv[1:] if argv is None else list(argv))
    return 0
