"""Metrics: summed on the device between log steps (no per-step host sync), averaged over
processes when logged, written to ``metrics.jsonl`` and to the tracker (TensorBoard / W&B)."""

from __future__ import annotations

import json
from pathlib import Path

import torch


class MetricLog:
    def __init__(self, accelerator, path: Path):
        self.accelerator = accelerator
        self.path = path
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for name, value in metrics.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.count += 1

    def drop_after(self, step: int) -> None:
        """Remove the lines of steps after ``step`` from ``metrics.jsonl`` (main process only): a
        resumed run logs again the steps that the stopped run took after its checkpoint, and
        a file holding both would count them twice."""
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        if len(kept) != len(lines):
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(self.path)

    def flush(self, step: int, extra: dict[str, float]) -> dict[str, float]:
        """Average what was added since the last flush, over steps and processes, and log it."""
        logged = dict(extra)
        if self.count:
            names = sorted(self.sums)
            means = torch.stack([self.sums[n] for n in names]) / self.count
            means = self.accelerator.reduce(means.to(self.accelerator.device), reduction="mean")
            logged.update({f"train/{n}": v for n, v in zip(names, means.tolist())})
        self.sums, self.count = {}, 0
        if self.accelerator.is_main_process:
            with open(self.path, "a") as handle:
                handle.write(json.dumps({"step": step, **logged}) + "\n")
        self.accelerator.log(logged, step=step)
        return logged
