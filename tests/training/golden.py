"""The golden three-step record: what it holds, how it is checked, and how to remake or measure it.

``python tests/training/golden.py --out FILE [--threads N] [--no-onednn]`` runs every recorded
run (the five forward-noising objectives × sd15/sdxl/sd3 × LoRA/full, 3 steps each, uncached)
in one process and writes their losses and weight fingerprints as JSON; with ``--out`` equal to
:data:`GOLDEN` it remakes the record. Run it with 1 and 2 threads and with oneDNN off to see how
far the same computation moves across kernels (the tolerances below rest on that).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import zlib
from pathlib import Path

import torch

GOLDEN = Path(__file__).with_name("golden_three_steps.json")
CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"
OBJECTIVES = ("dcpo", "diffusion_dpo", "mapo", "rank_dpo", "sft")
KINDS = ("sd15", "sdxl", "sd3")
MODES = ("lora", "full")
# Settings that keep three steps from amplifying rounding beyond what a 1e-4 change shows through.
# At the tiny configs' β = 500 the DPO-style losses of steps 2-3 moved by up to 5.4e-5 across kernels
# (β/2 times the rounding of an error difference); at β = 50 by 4.4e-6. Full fine-tuning at lr 1e-3
# made steps 2-3 chaotic (Adam's first update is ±lr on every weight: 1.2e-3 across kernels).
BETA = 50
FULL_LR = "1e-5"


def overrides(objective: str, mode: str) -> list[str]:
    """The recorded runs' settings beside the tiny config (the record is of the uncached path)."""
    beta = [f"objective.beta={BETA}"] if objective in ("dcpo", "diffusion_dpo", "rank_dpo") else []
    return ["data.cache=false"] + beta + (["lora=null", f"optim.lr={FULL_LR}"] if mode == "full" else [])


def fingerprint(weights: dict) -> list[float]:
    """Two numbers that move with any weight: ``Σ w·r`` (``r`` a fixed random tensor per key) and ``Σ |w|``."""
    dot = total = 0.0
    for key in sorted(weights):
        w = weights[key].double()
        r = torch.randn(w.shape, generator=torch.Generator().manual_seed(zlib.crc32(key.encode())), dtype=torch.float64)
        dot += float((w * r).sum())
        total += float(w.abs().sum())
    return [dot, total]


def runs() -> list[tuple[str, str, str]]:
    """``(objective, kind, mode)`` of every recorded run."""
    return [(o, k, m) for o in OBJECTIVES for k in KINDS for m in MODES]


def trained_weights(out: Path, kind: str, mode: str, base: Path) -> dict:
    """The LoRA tensors, or the change of every weight from ``base`` under full fine-tuning."""
    from safetensors.torch import load_file

    if mode == "lora":
        return load_file(str(out / "lora" / "pytorch_lora_weights.safetensors"))
    name = "unet" if kind in ("sd15", "sd21", "sdxl") else "transformer"
    trained = load_file(str(next((out / "final" / name).glob("*.safetensors"))))
    start = load_file(str(next((base / name).glob("*.safetensors"))))
    return {k: trained[k] - start[k] for k in start}


def record(folder: Path, full_lr: str = FULL_LR) -> dict:
    """Run every recorded run in ``folder`` (tiny pipelines and data written there); the record."""
    from diffalign.cli import main
    from diffalign.testing import save_tiny_pipeline

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import write_groups

    data = {2: write_groups(folder / "pairs", k=2), 3: write_groups(folder / "ranked", k=3)}
    models = {kind: save_tiny_pipeline(kind, folder / f"tiny-{kind}") for kind in KINDS}
    result = {}
    for objective, kind, mode in runs():
        out = folder / "-".join((objective, kind, mode))
        extra = [o.replace(FULL_LR, full_lr) for o in overrides(objective, mode)]
        args = ["train", "--config", str(CONFIGS / "tiny" / f"{objective}.yaml"), f"model.path={models[kind]}",
                f"data.path={data[3 if objective == 'rank_dpo' else 2]}", f"output_dir={out}",
                "logging.progress_bar=false", *extra]
        assert main(args) == 0, args
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        result[f"{objective}/{kind}/{mode}"] = {
            "losses": [r["train/loss"] for r in rows],
            "weights": fingerprint(trained_weights(out, kind, mode, models[kind])),
        }
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-onednn", action="store_true", help="torch.backends.mkldnn.enabled = False")
    parser.add_argument("--full-lr", default=FULL_LR)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.mkldnn.enabled = not args.no_onednn
    with tempfile.TemporaryDirectory() as tmp:
        args.out.write_text(json.dumps(record(Path(tmp), args.full_lr), indent=1, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------- the check
REFERENCE_OBJECTIVES = ("dcpo", "diffusion_dpo", "rank_dpo")
"""At step 1 their policy *is* their reference (a full run's frozen copy, a LoRA run's B = 0), and
both are computed the same way, so the first loss is log 2 exactly, on any CPU."""
LOG_2 = float(torch.tensor(math.log(2)))  # in float32, the losses' dtype
RTOL = 3e-5
"""Everything else moves with the float32 kernels. Measured by rerunning the record (this module's
``__main__``) on a 2-core AMD EPYC (AVX2) under five settings: 2 threads, 1 thread, oneDNN off
(``torch.backends.mkldnn.enabled = False``), ATen without AVX2 (``ATEN_CPU_CAPABILITY=default``)
and oneDNN at SSE4.1 (``ONEDNN_MAX_CPU_ISA=SSE41``). The largest spread of any quantity over the
five, relative to its size, was 4.4e-6 for a loss (diffusion_dpo/sdxl/lora, step 3; MaPO's and
SFT's first losses 1.2e-6), 4.2e-6 for the fingerprint's ``Σ w·r`` relative to ``Σ |w|`` (a
sum with cancellations is compared on the scale of its terms) and 4.6e-6 for ``Σ |w|``. The
previous record, made on another CPU, sat inside the same spread. 3e-5 is about 6.5 times the
largest; a loss changed by 1e-4 relative still fails (test_a_changed_loss_fails_the_golden_check)."""


def mismatches(key: str, losses: list[float], weights_fingerprint: list[float]) -> list[str]:
    """What differs from the record of ``key`` beyond :data:`RTOL` (or, for the first loss of a
    reference objective, at all); empty when the run reproduces it."""
    want = json.loads(GOLDEN.read_text())[key]
    found = []
    if key.split("/")[0] in REFERENCE_OBJECTIVES and losses[0] != LOG_2:
        found.append(f"step-1 loss {losses[0]!r} is not log 2 ({LOG_2!r}): the policy and the reference differ")
    for step, (got, expected) in enumerate(zip(losses, want["losses"], strict=True), start=1):
        if abs(got - expected) > RTOL * abs(expected):
            found.append(f"step-{step} loss {got!r}, recorded {expected!r}")
    (dot, total), (want_dot, want_total) = weights_fingerprint, want["weights"]
    if abs(total - want_total) > RTOL * want_total or abs(dot - want_dot) > RTOL * want_total:
        found.append(f"weights' fingerprint {[dot, total]}, recorded {want['weights']}")
    return found
