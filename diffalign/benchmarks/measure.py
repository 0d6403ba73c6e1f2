"""Timing, peak memory, reports and the command-line pieces shared by every benchmark.

Peak memory is what a set-up adds over the process as it was just before the set-up started:

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was
  allocated at the start (so the weights a set-up loads count, a previous set-up's do not);
- CPU: the resident set size (``/proc/self/statm``) sampled every millisecond by a thread, minus
  the RSS at the start. The process-lifetime ``ru_maxrss`` cannot separate two set-ups measured in
  one process, and ``tracemalloc`` does not see PyTorch's allocations.

Before each measurement, garbage is collected and glibc is asked to hand freed heap pages back
(``malloc_trim``), so memory a previous set-up freed is not counted as this one's baseline.

RSS on CPU counts what glibc's heap keeps as well as what the tensors need, so
:class:`TensorMemory` also measures, in a separate profiled pass, the peak of live CPU tensor
bytes: the CPU counterpart of ``max_memory_allocated``.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffalign.errors import DiffalignError


def release_memory() -> None:
    """Collect garbage, empty the CUDA cache and return freed heap pages to the OS (glibc)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim, the sampler still works
        pass


def rss_bytes() -> int:
    """Current resident set size of this process (Linux), else the lifetime peak (``ru_maxrss``)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Context manager measuring the peak memory a block adds (see the module docstring).

    Example:
        >>> with PeakMemory() as mem:
        ...     x = torch.ones(1_000_000)
        >>> mem.peak_bytes > 0
        True
    """

    def __init__(self, device: torch.device | str | None = None, interval_s: float = 0.001):
        device = torch.device(device) if device is not None else None
        self.cuda = device is not None and device.type == "cuda"
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.kind = "cuda max_memory_allocated" if self.cuda else "peak RSS increase"

    def __enter__(self) -> PeakMemory:
        release_memory()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            return self
        self._start = rss_bytes()
        self._peak = self._start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, rss_bytes())
            time.sleep(self.interval_s)

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self._start
            return
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self._peak, rss_bytes()) - self._start


class TensorMemory:
    """Context manager measuring the peak bytes of live CPU tensors a block adds.

    The CPU counterpart of CUDA's ``max_memory_allocated``: the running sum of the profiler's
    allocation events (``profile_memory=True``), so it counts what the tensors need and not what
    glibc's heap keeps after they are freed (on the 2-core machine the step's freed activations
    were about half of the RSS increase, and a ``malloc_trim`` after the step returned them).
    The profiler slows the block down: measure it in its own pass, not the timed one.

    Example:
        >>> with TensorMemory() as mem:
        ...     x = torch.ones(1_000_000)
        >>> mem.peak_bytes >= 4_000_000
        True
    """

    def __enter__(self) -> TensorMemory:
        from torch.profiler import ProfilerActivity, profile

        release_memory()
        self.peak_bytes = 0
        self._profile = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._profile.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        from torch._C._autograd import DeviceType

        self._profile.__exit__(*exc)
        events = self._profile.profiler.kineto_results.events()
        self.peak_bytes = peak_of_running_sum(
            [(e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]" and e.device_type() == DeviceType.CPU]
        )


def peak_of_running_sum(events: list[tuple[int, int]]) -> int:
    """The largest running total of ``(time, bytes)`` allocation (+) and free (−) events, in time
    order, counted from zero (what was live before the first event is not counted)."""
    total = peak = 0
    for _, n_bytes in sorted(events):
        total += n_bytes
        peak = max(peak, total)
    return peak


def warm_up_compiler(device: torch.device | str = "cpu") -> int:
    """Compile and run (forward and backward) a two-op function, so that ``torch.compile``'s
    one-off start-up is paid here and not counted as the first compiled set-up's memory.

    That start-up (importing dynamo, AOT autograd and inductor with their dependencies, and on
    CPU probing the C++ toolchain) costs the process the same whatever model is compiled, the way
    importing diffusers does; a user pays it once per process. Compiling the model itself is
    not covered and stays in the set-up's numbers.

    Returns:
        The RSS increase (CPU) or allocated memory (CUDA) it took, in bytes, to report beside
        the results.
    """
    with PeakMemory(device) as mem:
        fn = torch.compile(lambda x: torch.nn.functional.silu(x) * 2.0)
        x = torch.ones(8, device=device, requires_grad=True)
        fn(x).sum().backward()
        synchronize(device)
    return mem.peak_bytes


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so a wall-clock time covers it (a no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@dataclass
class StepTimer:
    """Collects the wall time between successive :meth:`tick` calls, dropping ``warmup`` of them.

    The first tick only starts the clock; each later one ends a step.
    """

    device: str = "cpu"
    warmup: int = 1
    times: list[float] = field(default_factory=list)
    _last: float | None = None
    _seen: int = 0

    def tick(self) -> None:
        synchronize(self.device)
        now = time.perf_counter()
        if self._last is not None:
            self._seen += 1
            if self._seen > self.warmup:
                self.times.append(now - self._last)
        self._last = now

    def resume(self) -> None:
        """Restart the clock without ending a step: what passed since the last tick is not timed
        (a lock-step run's wait for its turn, :mod:`.lockstep`)."""
        synchronize(self.device)
        self._last = time.perf_counter()

    @property
    def median_s(self) -> float:
        if not self.times:
            raise RuntimeError("no timed steps: run more steps than warm-up steps")
        return statistics.median(self.times)


def mib(n_bytes: float) -> float:
    return n_bytes / 2**20


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A Markdown table of ``rows`` with ``columns`` given as ``(key, header, format)``;
    a missing value prints as an empty cell."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row.get(key)
            cells.append("" if value is None else (format(value, fmt) if fmt else str(value)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def environment() -> dict:
    """What the numbers were measured on."""
    import platform

    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
    }
    try:
        import diffusers

        env["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return env


def write_report(out_dir: str | Path, name: str, payload: dict, table: str, script: str,
                 argv: list[str]) -> tuple[Path, Path]:
    """Write ``<name>.json`` (``payload`` plus the command and environment) and ``<name>.md``,
    then print the table and the two paths; the command is ``python benchmarks/<script> <argv>``,
    what re-makes the report.

    Returns:
        The two paths.
    """
    import shlex

    command = shlex.join(["python", f"benchmarks/{script}", *argv])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"command": command, "environment": environment(), **payload}
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2, default=str))
    md_path.write_text(f"Command: `{command}`\n\n{table}")
    print(table)
    print(f"wrote {json_path} and {md_path}")
    return json_path, md_path


# ---------------------------------------------------------------------------------- command line
class BenchmarkError(DiffalignError, ValueError):
    """Bad benchmark input (a missing model folder, a non-positive count); the CLI prints it."""


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str | None, device: str) -> str:
    """The dtype name to use: ``name``, or fp16 on CUDA and fp32 elsewhere (DESIGN: generation runs
    in half precision on GPU; CPU kernels for fp16 are slow or missing)."""
    if name is not None:
        return name
    return "fp16" if torch.device(device).type == "cuda" else "fp32"


def pipeline_folder(model: str) -> Path:
    """``model`` as a path, checked to be a diffusers pipeline folder.

    Raises:
        BenchmarkError: no ``model_index.json`` there.
    """
    path = Path(model).expanduser()
    if not (path / "model_index.json").is_file():
        raise BenchmarkError(f"--model {model}: not a diffusers pipeline folder (no model_index.json there)")
    return path


def check_counts(**counts: int) -> None:
    """Raise :class:`BenchmarkError` naming the first option that is not a positive integer."""
    for name, value in counts.items():
        if value < 1:
            raise BenchmarkError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def add_common_arguments(parser, dtype_of: str | None) -> None:
    """``--dtype`` (when ``dtype_of`` names what it sets), ``--device`` and ``--out``."""
    if dtype_of is not None:
        parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None,
                            help=f"{dtype_of} precision (default: fp16 on CUDA, fp32 on CPU)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--out", default="benchmarks/results", help="report folder (default: benchmarks/results)")
