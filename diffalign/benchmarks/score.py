"""Scoring throughput per reward model: one image per ``score`` call against batched calls.

Every reward scores the same ``--images`` random PIL images (fixed seed), each with its own
prompt, twice: one image per call (``naive``, how a per-image loop calls a scorer) and
``--batch-size`` images per call (``batched``). The report gives images/s of both, their ratio,
the peak memory of each, and the largest difference between the two runs' scores, which should be
float rounding only (a larger one means batching changes what is scored, e.g. padding leaking).

``--rewards NAME`` builds the tiny random model of ``NAME`` offline into a temporary folder and
loads it back through :func:`diffalign.rewards.load_reward`, as a real checkpoint is loaded;
``NAME=PATH`` (a folder, file or hub id) loads real weights instead.

Example:
    python benchmarks/score.py --rewards pickscore hpsv2.1 --images 32 --batch-size 16 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from diffalign.benchmarks.generate import benchmark_prompts, timed
from diffalign.benchmarks.measure import (BenchmarkError, add_common_arguments, check_counts, default_device,
                                          markdown_table, mib, resolve_dtype, write_report)
from diffalign.rewards.tiny import TINY_REWARDS

COLUMNS = [
    ("reward", "reward", ""),
    ("images", "images", "d"),
    ("naive_images_per_s", "naive images/s", ".1f"),
    ("batched_images_per_s", "batched images/s", ".1f"),
    ("ratio", "× naive", ".2f"),
    ("naive_peak_mib", "naive peak MiB", ".1f"),
    ("batched_peak_mib", "batched peak MiB", ".1f"),
    ("max_abs_score_diff", "max abs score diff", ".2e"),
]


def parse_rewards(items: list[str] | None) -> list[tuple[str, str | None]]:
    """``[(name, path or None)]`` from ``NAME`` / ``NAME=PATH`` items (default: every registered
    reward with a tiny build, in registry order).

    Raises:
        BenchmarkError: an unknown name (naming the valid ones), or a bare name with no tiny build.
    """
    from diffalign.rewards import REWARDS

    parsed = []
    for item in items or [name for name in REWARDS if name in TINY_REWARDS]:
        name, _, path = item.partition("=")
        if name not in REWARDS:
            raise BenchmarkError(f"--rewards: unknown reward {name!r}; choose from {', '.join(REWARDS)}")
        if not path and name not in TINY_REWARDS:
            raise BenchmarkError(f"--rewards: {name!r} has no tiny build; give its weights as {name}=PATH")
        parsed.append((name, path or None))
    return parsed


def load_benchmark_reward(name: str, path: str | None, workdir: Path, device: str, dtype: torch.dtype):
    """Reward ``name`` from ``path``, or its tiny build written under ``workdir`` when ``path`` is None."""
    from diffalign.rewards import load_reward

    from diffalign.rewards.tiny import save_tiny_reward

    kwargs = {}
    if path is None:
        try:
            path, kwargs = save_tiny_reward(name, workdir / name)
        except ValueError as err:
            raise BenchmarkError(str(err)) from err
    return load_reward(name, path, dtype=dtype, device=device, **kwargs)


def random_images(count: int, resolution: int, seed: int = 0) -> list:
    """``count`` RGB noise images, ``resolution`` pixels square, the same for a given ``seed``."""
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (count, resolution, resolution, 3), generator=generator, dtype=torch.uint8)
    return [Image.fromarray(array.numpy()) for array in pixels]


def score_in_batches(reward, images: list, prompts: list[str], batch_size: int) -> torch.Tensor:
    """``[N]`` scores from ``reward.score`` over consecutive batches of ``batch_size`` images."""
    return torch.cat([reward.score(images[start:start + batch_size], prompts[start:start + batch_size])
                      for start in range(0, len(images), batch_size)])


def benchmark_reward(reward, images: list, prompts: list[str], batch_size: int, device: str) -> dict:
    """Time one reward naive (batch 1) and batched, after one untimed call at each of the two batch sizes.

    Returns:
        The timings, scores check and peak memory of one reward (:func:`run_benchmark` adds its name).
    """
    # PIL input scores under no_grad already (RewardModel._run), so no autograd state is built here.
    reward.score(images[:1], prompts[:1])
    reward.score(images[:batch_size], prompts[:batch_size])
    naive, naive_s, naive_mem = timed(lambda: score_in_batches(reward, images, prompts, 1), device)
    batched, batched_s, batched_mem = timed(lambda: score_in_batches(reward, images, prompts, batch_size), device)
    naive_ips, batched_ips = len(images) / naive_s, len(images) / batched_s
    return {
        "label": reward.label, "images": len(images), "naive_images": int(naive.numel()),
        "batched_images": int(batched.numel()), "naive_seconds": naive_s, "batched_seconds": batched_s,
        "naive_images_per_s": naive_ips, "batched_images_per_s": batched_ips, "ratio": batched_ips / naive_ips,
        "naive_peak_mib": mib(naive_mem.peak_bytes), "batched_peak_mib": mib(batched_mem.peak_bytes),
        "max_abs_score_diff": float((naive.float() - batched.float()).abs().max()), "memory": batched_mem.kind,
    }


def run_benchmark(rewards: list[tuple[str, str | None]], *, images: int, batch_size: int, resolution: int,
                  device: str, dtype: str, workdir: Path, seed: int = 0) -> list[dict]:
    """One row per reward, each loaded (untimed), benchmarked and released before the next."""
    from diffalign.config import torch_dtype

    pictures = random_images(images, resolution, seed)
    prompts = benchmark_prompts(images)
    rows = []
    for name, path in rewards:
        reward = load_benchmark_reward(name, path, workdir, device, torch_dtype(dtype))
        # A tiny model's label can hold its temporary folder (clip_score names its backbone), so
        # the table names tiny models by registry name instead.
        rows.append({"reward": reward.label if path else f"{name} (tiny)", "name": name,
                     "path": path or "tiny (random weights)",
                     **benchmark_reward(reward, pictures, prompts, batch_size, device)})
        # Drop this model before loading the next, so two never sit in (GPU) memory together; the
        # next PeakMemory collects garbage and empties the cache before taking its baseline.
        del reward
    return rows


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="benchmarks/score.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rewards", nargs="+", default=None, metavar="NAME[=PATH]",
                        help="rewards to time; NAME alone builds its tiny random model offline "
                             "(default: every registered reward, tiny)")
    parser.add_argument("--images", type=int, default=32, help="images to score (default: 32)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per batched score call (default: 16)")
    parser.add_argument("--resolution", type=int, default=256, help="side of the random images (default: 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random images (default: 0)")
    add_common_arguments(parser, dtype_of="reward")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, write ``score.json``/``score.md`` to ``--out`` and print the table.

    Returns:
        0, or 2 after printing ``error: ...`` for bad input.
    """
    from diffalign.rewards import RewardLoadError

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    device = args.device or default_device()
    dtype = resolve_dtype(args.dtype, device)
    try:
        check_counts(images=args.images, batch_size=args.batch_size, resolution=args.resolution)
        rewards = parse_rewards(args.rewards)
        with tempfile.TemporaryDirectory(prefix="diffalign-bench-score-") as work:
            rows = run_benchmark(rewards, images=args.images, batch_size=args.batch_size, resolution=args.resolution,
                                 device=device, dtype=dtype, workdir=Path(work), seed=args.seed)
    except (BenchmarkError, RewardLoadError) as err:  # bad input, or weights that are not where --rewards says
        print(f"error: {err}", file=sys.stderr)
        return 2
    settings = {"images": args.images, "batch_size": args.batch_size, "resolution": args.resolution,
                "seed": args.seed, "dtype": dtype, "device": device,
                "memory": rows[0]["memory"] if rows else None,
                "warmup": "one untimed score call at batch 1 and one at --batch-size"}
    table = markdown_table(rows, COLUMNS)
    write_report(args.out, "score", {"settings": settings, "rows": rows}, table, "score.py", argv)
    return 0
