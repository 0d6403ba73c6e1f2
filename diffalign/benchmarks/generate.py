"""Generation throughput: our batched paths against a one-prompt-at-a-time pipeline loop.

Three set-ups draw the same images (same prompts, seeds, steps, guidance and resolution) from one
pipeline loaded once, before anything is timed:

- ``naive``: ``pipe(prompt, generator=torch.Generator().manual_seed(seed), ...)``, one image per
  call, as per-paper scripts do;
- ``synthetic builder``: :meth:`diffalign.builders.generators.Generators.draw`, ``--batch-size``
  prompts per call (the path of ``diffalign build synthetic``);
- ``evaluation``: :func:`diffalign.evaluation.generate.generate_images` into a fresh folder,
  PNG writing included, since that is part of what an evaluation run pays for.

Image ``i`` uses seed ``--seed + i`` everywhere (the evaluation layout's rule with one sample per
prompt), so the batched images should equal the naive ones up to float rounding; the report gives
the largest pixel difference (0–255) as a check that the set-ups did the same work.

Example:
    python benchmarks/generate.py --family sdxl --prompts 16 --steps 4 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from diffalign.benchmarks.measure import (BenchmarkError, PeakMemory, add_common_arguments, check_counts,
                                          default_device, markdown_table, mib, pipeline_folder, resolve_dtype,
                                          synchronize, write_report)

SETUPS = ("naive", "synthetic builder", "evaluation")
"""The set-ups, baseline first; ``ratio`` is each one's images/s over the baseline's."""

COLUMNS = [
    ("setup", "set-up", ""),
    ("images", "images", "d"),
    ("seconds", "seconds", ".2f"),
    ("images_per_s", "images/s", ".2f"),
    ("ratio", "× naive", ".2f"),
    ("peak_mib", "peak MiB", ".1f"),
    ("max_abs_pixel_diff", "max abs pixel diff vs naive (0–255)", "d"),
]

# Words the tiny tokenizers spell as whole tokens; real models read them as ordinary prompts.
_COLOURS = ("red", "blue", "green", "yellow", "black", "white")
_THINGS = ("cat", "dog", "circle", "square", "triangle", "tree", "house", "car")


def benchmark_prompts(count: int) -> list[str]:
    """``count`` distinct-looking prompts, the same on every run (cycling colour × object)."""
    pairs = [(colour, thing) for thing in _THINGS for colour in _COLOURS]
    return ["a photo of a {} {}".format(*pairs[i % len(pairs)]) for i in range(count)]


def resolve_model(model: str | None, family: str, workdir: Path) -> Path:
    """The pipeline folder to benchmark: ``model`` (checked), or the tiny ``family`` pipeline
    written under ``workdir``.

    Raises:
        BenchmarkError: ``model`` is not a diffusers pipeline folder.
    """
    if model is None:
        from diffalign.testing import save_tiny_pipeline

        return save_tiny_pipeline(family, workdir / f"tiny-{family}")
    return pipeline_folder(model)


def timed(fn: Callable[[], object], device: str) -> tuple[object, float, PeakMemory]:
    """``(fn(), wall seconds, PeakMemory)``; queued GPU work is waited for on both ends."""
    with PeakMemory(device) as memory:
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        seconds = time.perf_counter() - start
    return result, seconds, memory


def naive_images(pipe, prompts: list[str], seeds: list[int], options: dict) -> list:
    """One pipeline call per ``(prompt, seed)``, one image each: the per-paper-script baseline."""
    return [pipe(prompt, generator=torch.Generator().manual_seed(seed), **options).images[0]
            for prompt, seed in zip(prompts, seeds)]


def evaluation_images(pipe, prompts: list[str], settings, outdir: Path, batch_size: int) -> Path:
    """:func:`generate_images` writing one PNG per prompt into ``outdir`` (which must be new)."""
    from diffalign.evaluation.generate import generate_images

    records = [{"prompt": p} for p in prompts]
    return generate_images(records, outdir, settings, pipe=pipe, batch_size=batch_size, progress=False)


def read_evaluation_images(outdir: Path, count: int) -> list:
    """The ``count`` PNGs :func:`evaluation_images` wrote, in prompt order."""
    from PIL import Image

    from diffalign.evaluation.generate import sample_path

    images = []
    for index in range(count):
        with Image.open(sample_path(outdir, index, 0)) as image:
            images.append(image.convert("RGB"))
    return images


def max_pixel_diff(a: list, b: list) -> int:
    """Largest absolute difference (0–255) between paired PIL images."""
    import numpy as np

    if len(a) != len(b):
        raise ValueError(f"cannot compare {len(a)} images with {len(b)}")
    return max(int(np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max()) for x, y in zip(a, b))


def warm_up(pipe, prompts: list[str], seeds: list[int], options: dict, batch_size: int) -> None:
    """Untimed calls at both batch shapes the set-ups use (1 and ``batch_size``), so first-call
    costs (allocator growth, kernel selection) land on no set-up."""
    naive_images(pipe, prompts[:1], seeds[:1], options)
    if batch_size > 1:
        chunk = min(batch_size, len(prompts))
        pipe(prompts[:chunk], generator=[torch.Generator().manual_seed(s) for s in seeds[:chunk]], **options)


def result_row(setup: str, images: int, seconds: float, memory: PeakMemory, **extra) -> dict:
    """One table row; ``ratio`` is filled in once the baseline is known."""
    return {"setup": setup, "images": images, "seconds": seconds, "images_per_s": images / seconds,
            "peak_mib": mib(memory.peak_bytes), **extra}


def run_benchmark(model: Path, prompts: list[str], *, steps: int, resolution: int, batch_size: int,
                  guidance: float, device: str, dtype: str, seed: int, workdir: Path) -> dict:
    """Time the three set-ups on one loaded pipeline.

    Returns:
        ``{"rows": [one per set-up, baseline first], "memory": what peak memory means here}``.
    """
    from diffalign.builders.generators import Generators
    from diffalign.config import torch_dtype
    from diffalign.evaluation.generate import GenerationSettings, image_seed

    # Generators loads the pipeline itself; the other set-ups borrow that same object.
    generators = Generators([str(model)], device, torch_dtype(dtype), steps, guidance, resolution, resolution)
    pipe = generators.pipes[0]
    settings = GenerationSettings(model=str(model), samples=1, seed=seed, steps=steps, guidance=guidance,
                                  height=resolution, width=resolution)
    seeds = [image_seed(settings, i, 0) for i in range(len(prompts))]
    options = {"num_inference_steps": steps, "guidance_scale": guidance, "height": resolution, "width": resolution}
    warm_up(pipe, prompts, seeds, options, batch_size)

    naive, seconds, memory = timed(lambda: naive_images(pipe, prompts, seeds, options), device)
    rows = [result_row("naive", len(naive), seconds, memory, max_abs_pixel_diff=0)]

    drawn, seconds, memory = timed(lambda: generators.draw(0, prompts, seeds, batch_size), device)
    rows.append(result_row("synthetic builder", len(drawn), seconds, memory,
                           max_abs_pixel_diff=max_pixel_diff(naive, drawn)))

    outdir = workdir / "evaluation"
    _, seconds, memory = timed(lambda: evaluation_images(pipe, prompts, settings, outdir, batch_size), device)
    files = len(list(outdir.glob("*/samples/*.png")))
    written = read_evaluation_images(outdir, len(prompts))
    rows.append(result_row("evaluation", files, seconds, memory, png_files=files,
                           max_abs_pixel_diff=max_pixel_diff(naive, written)))

    for row in rows:
        row["ratio"] = row["images_per_s"] / rows[0]["images_per_s"]
    return {"rows": rows, "memory": memory.kind}


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (see the module docstring)."""
    from diffalign.families import BENCHMARK_FAMILY
    from diffalign.testing import TINY_FAMILIES

    parser = argparse.ArgumentParser(prog="benchmarks/generate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None,
                        help="diffusers pipeline folder (default: a tiny random pipeline of --family, built offline)")
    parser.add_argument("--family", choices=TINY_FAMILIES, default=BENCHMARK_FAMILY,
                        help="tiny pipeline when no --model (default: sdxl)")
    parser.add_argument("--prompts", type=int, default=16, help="prompts, one image each (default: 16)")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps (default: 4)")
    parser.add_argument("--resolution", type=int, default=64, help="image height and width (default: 64, tiny-sized)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per call of the batched set-ups (default: 8)")
    parser.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default: 5.0)")
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i (default: 0)")
    add_common_arguments(parser, dtype_of="pipeline")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, write ``generate.json``/``generate.md`` to ``--out`` and print the table.

    Returns:
        0, or 2 after printing ``error: ...`` for bad input.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    device = args.device or default_device()
    dtype = resolve_dtype(args.dtype, device)
    try:
        check_counts(prompts=args.prompts, steps=args.steps, resolution=args.resolution, batch_size=args.batch_size)
        prompts = benchmark_prompts(args.prompts)
        with tempfile.TemporaryDirectory(prefix="diffalign-bench-generate-") as work:
            model = resolve_model(args.model, args.family, Path(work))
            result = run_benchmark(model, prompts, steps=args.steps, resolution=args.resolution,
                                   batch_size=args.batch_size, guidance=args.guidance, device=device, dtype=dtype,
                                   seed=args.seed, workdir=Path(work))
    except BenchmarkError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    settings = {"model": args.model or f"tiny {args.family} (random weights)", "prompts": args.prompts,
                "steps": args.steps, "resolution": args.resolution, "batch_size": args.batch_size,
                "guidance": args.guidance, "seed": args.seed, "dtype": dtype, "device": device,
                "memory": result["memory"], "warmup": "one untimed call at batch 1 and one at --batch-size"}
    table = markdown_table(result["rows"], COLUMNS)
    payload = {"settings": settings, "rows": result["rows"]}
    write_report(args.out, "generate", payload, table, "generate.py", argv)
    return 0
