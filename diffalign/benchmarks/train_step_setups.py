"""The measured set-ups of the training-step benchmark (:mod:`.train_step`): what each one runs, and
how one round of it is timed and measured (a row: median step, pairs/s, peak memory, and in the
first round FLOPs and the live-tensor peak).

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
- ``diffalign-uncached+noshare``: uncached, the policy computing again what its LoRA-disabled
  reference computed alike (``Reference.share_prefix`` off: :mod:`diffalign.families.shared_prefix`);
- ``diffalign+nopass``: the default with ``reference_pass: false`` (the reference's forward in every
  step; under full fine-tuning its frozen copy stays loaded);
- ``diffalign+regional``: the same with ``compile: regional`` (the repeated blocks compiled);
- ``diffalign+compile``: the same with ``torch.compile`` of the whole model;
- ``diffalign+ckpt+compile``: both switches;
- ``diffalign+compile+budget``: ``torch.compile`` with ``compile_memory_budget``
  (``--memory-budget``, default 0.95): the compiler recomputes what it must to keep that
  fraction of the activations, instead of checkpointing every block.

A compiled set-up's first compile from cold caches (:func:`first_compile`) is paid before the
rounds: once per model and shape, as building the latent cache is per dataset.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from diffalign.benchmarks.lockstep import timed_step
from diffalign.benchmarks.measure import PeakMemory, StepTimer, mib, release_memory

SETUPS = ("peer", "naive", "diffalign", "diffalign-uncached", "diffalign-uncached+noshare", "diffalign+nopass",
          "diffalign+nolean", "diffalign-uncached+nolean",
          "diffalign+regional", "diffalign-uncached+regional",
          "diffalign+ckpt", "diffalign+compile", "diffalign+ckpt+compile", "diffalign+compile+budget")
# The tensor-memory pass: the first step allocates the optimiser's state, the second is a steady one.
MEMORY_PASS_STEPS = 2


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


def run_paired(args, model: str, parquet: Path, data: Path, setup: str, first_round: bool = True) -> tuple[dict, dict]:
    """Run a set-up in lock-step with its own run of the peer (:mod:`.lockstep`): their steps
    alternate, so a slow spell of the machine slows both. Returns ``(row, peer_row)``; the row's
    ``paired_peer_pairs_per_s`` is that peer run's, the one its ratio to the peer is taken against."""
    from diffalign.benchmarks.lockstep import Turns
    from diffalign.benchmarks.peer import start_peer

    turns, other_side = Turns.pair()
    peer = start_peer(args, model, parquet, "peak", args.warmup + args.steps, turns=other_side)
    turns.close_other_side()
    try:
        if setup == "naive":
            row = run_naive(args, model, data, first_round, turns=turns)
        else:
            row = run_diffalign(args, model, data, setup, first_round, turns=turns)
    except BaseException:
        peer.stop()
        raise
    finally:
        turns.close()
    timed = peer.result()
    timer = StepTimer(args.device, warmup=args.warmup, times=timed["step_times_s"])
    peer_row = _result("peer", args, timer, timed["peak_bytes"], PeakMemory(args.device).kind, None, None)
    row["paired_peer_pairs_per_s"] = peer_row["pairs_per_s"]
    return row, peer_row


def paired_peer_row(args, model: str, parquet: Path, runs: list[dict], first_round: bool) -> dict:
    """The peer's row of a lock-step round: every step of its paired ``runs``, the smallest of
    their peaks (the same script each time), and in the first round the tensor-memory pass."""
    from diffalign.benchmarks.peer import run_peer

    timer = StepTimer(args.device, warmup=0, times=[t for run in runs for t in run["step_times_s"]])
    peak = min(run["peak_mib"] for run in runs) * 2**20
    tensors = None
    if first_round and args.tensor_memory and not args.device.startswith("cuda"):
        tensors = run_peer(args, model, parquet, "tensor", MEMORY_PASS_STEPS)["peak_bytes"]
    return _result("peer", args, timer, peak, PeakMemory(args.device).kind, None, tensors)


def make_naive(args, model: str, data: Path):
    from diffalign.benchmarks.naive import NaiveDPO

    return NaiveDPO(model, str(data), resolution=args.resolution, batch_size=args.batch_size,
                    lora_rank=args.lora_rank if args.mode == "lora" else None, lr=args.lr,
                    mixed_precision=args.mixed_precision, device=args.device, workers=args.workers)


def run_naive(args, model: str, data: Path, first_round: bool = True, turns=None) -> dict:
    """Time the naive loop; peak memory covers loading it and its steps. FLOPs and the tensor
    memory pass (deterministic) are measured in the first round only. ``turns``: lock-step
    (:func:`run_paired`)."""
    timer = StepTimer(args.device, warmup=args.warmup)
    with PeakMemory(args.device) as mem:
        naive = make_naive(args, model, data)
        timer.tick()
        for _ in range(args.warmup + args.steps):
            naive.step()
            timed_step(timer, turns)
        if turns is not None:
            turns.close()
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

    raw = diffalign_raw_config(args, model, data, out, setup, steps)
    return from_dict(TrainConfig, raw, source=f"benchmark set-up {setup}")


def diffalign_raw_config(args, model: str, data: Path, out: Path, setup: str, steps: int | None = None) -> dict:
    """The config of a diffalign set-up as the YAML mapping a user writes."""
    return {
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
        "reference_pass": False if "+nopass" in setup else "auto",
        "checkpoint_every": 0,
        "output_dir": str(out),
        "logging": {"report_to": "none", "progress_bar": False},
    }


def run_diffalign(args, model: str, data: Path, setup: str, first_round: bool = True, turns=None) -> dict:
    """Time the real trainer (its own loop, data loader and logging) through its ``on_step`` hook.
    ``turns``: lock-step (:func:`run_paired`)."""
    from diffalign.families.reference import Reference
    from diffalign.training import Trainer

    timer = StepTimer(args.device, warmup=args.warmup)
    forget_compiled(setup)
    Reference.share_prefix = "+noshare" not in setup  # a class switch: set for every set-up, so none inherits it
    with tempfile.TemporaryDirectory() as out, PeakMemory(args.device) as mem:
        trainer = Trainer(diffalign_config(args, model, data, Path(out), setup))
        timer.tick()
        trainer.run(on_step=lambda step, _: timed_step(timer, turns))
        if turns is not None:
            turns.close()
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
