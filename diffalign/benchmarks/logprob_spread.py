"""How far a step's recomputed log-probability strays from the sampler's before any update: the
ratio ``exp(log p_recomputed − log p_sampled)`` that an online RL objective clips (Flow-GRPO's
clip range is 1e-4 on SD3). The sampler runs in fp32 (:func:`diffalign.solver.solve` with
``log_probs=True``); each step is recomputed with :func:`diffalign.solver.step_log_prob` in fp32
and under autocast to a lower precision. In fp32 the ratio is 1 to 1e-6 (``tests/test_noise_rules.py``);
under bf16 its spread is what this measures, per family and noise rule, on the tiny random
pipelines of :mod:`diffalign.testing` (no downloads).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

def rules_for(family) -> tuple[str, ...]:
    """The rules a family samples with for RL: Flow-GRPO's SDE and CPS for a flow, η-DDIM (η = 1)
    for ε/v UNets."""
    return ("flow_sde", "cps") if family.prediction_type == "flow" else ("ddim",)


def _rule(name: str):
    from diffalign.noise_rules import CPS, FlowSDE
    from diffalign.solver import DDIM

    return {"ddim": DDIM(1.0), "flow_sde": FlowSDE(), "cps": CPS()}[name]


def spread(family, rule_name: str, steps: int, dtype: torch.dtype, seed: int = 0) -> dict:
    """``{"max_ratio_gap", "median_logp_gap"}`` of one sampled chain (2 prompts × 2 samples)."""
    from diffalign.solver import initial_noise, sampling_grid, solve, step_log_prob

    rule = _rule(rule_name)
    frames = 5 if family.media == "video" else None
    noise = initial_noise(family, 2, 2, 32, generator=torch.Generator().manual_seed(seed), frames=frames)
    cond = family.encode_prompts(["a red cat", "a blue dog"], group_size=2)
    grid = sampling_grid(family, steps, 2, noise.shape[-2:])
    gens = [torch.Generator().manual_seed(seed + i) for i in range(2)]
    traj = solve(family, family.denoiser, noise, cond, grid, rule, generator=gens, log_probs=True)
    device = "cuda" if noise.is_cuda else "cpu"
    with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
        again = torch.stack([step_log_prob(family, family.denoiser, traj.latents[i], traj.latents[i + 1], grid[:, i],
                                           grid[:, i + 1], cond, rule=rule) for i in range(steps)])
    gap = again.float() - traj.log_prob
    return {"max_ratio_gap": float((gap.exp() - 1).abs().max()), "median_logp_gap": float(gap.abs().median())}


def measure(kinds: list[str], steps: int, dtypes: list[str]) -> list[dict]:
    """One row per tiny family, rule and recomputation dtype."""
    from diffalign.families import load
    from diffalign.testing import save_tiny_pipeline

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for kind in kinds:
            family = load(save_tiny_pipeline(kind, Path(folder) / kind))
            for rule in rules_for(family):
                for name in dtypes:
                    rows.append({"family": kind, "rule": rule, "recomputed_in": name,
                                 **spread(family, rule, steps, getattr(torch, name))})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    from diffalign.testing import TINY_FAMILIES

    parser.add_argument("--families", nargs="+", default=list(TINY_FAMILIES), choices=list(TINY_FAMILIES),
                        help="tiny pipelines (diffalign.testing; default: all)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    rows = measure(args.families, args.steps, args.dtypes)
    print("| family | rule | recomputed in | max abs(ratio − 1) | median abs(Δ log p) |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['rule']} | {r['recomputed_in']} | {r['max_ratio_gap']:.1e} | {r['median_logp_gap']:.1e} |")
    print(json.dumps({"torch": torch.__version__, "rows": rows}))
    return 0


__all__ = ["main", "measure", "rules_for", "spread"]
