"""What the fast sampling choices of an online collection save: seconds to collect (sample with
DiffusionNFT's old weights, decode, score) and the mean reward of what was sampled, per set-up of
guidance, ``rollout.ode`` and steps, on the toy base model with the toy reward by default.

The same prompts and seeds in every set-up; the first repeat is a warm-up and is not timed.
Shapes: ``prompts`` × ``images`` samples per collection.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SETUPS = {
    "ddim 10, guidance 4": {"steps": 10, "guidance": 4.0, "ode": "ddim"},
    "ddim 10, CFG-free": {"steps": 10, "guidance": 1.0, "ode": "ddim"},
    "dpm2 10, CFG-free": {"steps": 10, "guidance": 1.0, "ode": "dpm2"},
    "ddim 5, CFG-free": {"steps": 5, "guidance": 1.0, "ode": "ddim"},
    "dpm2 5, CFG-free": {"steps": 5, "guidance": 1.0, "ode": "dpm2"},
    "ddim 10, guidance 4, a prompt at a time": {"steps": 10, "guidance": 4.0, "ode": "ddim", "sample_batch": 1},
}
"""Set-ups: the toy benchmark's guided sampler, DiffusionNFT's CFG-free one, both ODE solvers at
10 and 5 steps, and the guided sampler one prompt at a time with each prompt scored in the rewards'
background thread while the next samples (``rollout.sample_batch``)."""

TOY_REWARD = [{"name": "diffalign.toy.reward:ToyReward"}]
"""The toy reward through the online rewards (:class:`~diffalign.rewards.online.OnlineRewards`, whose
background thread ``sample_batch`` uses)."""


def measure(model: str | Path, setups: dict = SETUPS, repeats: int = 3, prompts: int = 4, images: int = 8,
            resolution: int = 32, rewards: list | None = None) -> dict[str, dict]:
    """``{set-up: {"seconds": [repeats], "reward": mean reward}}`` of one collection each."""
    from diffalign.config import LoRAConfig
    from diffalign.families import load
    from diffalign.objectives import build_objective
    from diffalign.rollout_settings import OnlineRollout
    from diffalign.steps import group_generators
    from diffalign.steps.nft import NFTStep
    from diffalign.toy.world import PROMPTS
    from diffalign.training.lora import add_lora

    family = load(str(model))
    add_lora(family.denoiser, LoRAConfig(rank=8, alpha=8))
    objective = build_objective({"name": "diffusion_nft", "kl_beta": 0.0})
    rows = list(range(prompts))
    batch = {"prompts": [PROMPTS[i % len(PROMPTS)] for i in rows], "ids": [str(i) for i in rows], "indices": rows,
             "metas": [None] * prompts}
    results: dict[str, dict] = {}
    for repeat in range(repeats + 1):
        for name, extra in setups.items():
            settings = OnlineRollout(images_per_prompt=images, micro_batch=images * 2, resolution=resolution,
                                     updates_per_collection=1,
                                     rewards=rewards or TOY_REWARD, **extra)
            step = NFTStep(family, objective, None, 0, settings)
            began = time.perf_counter()
            step.collect(family.denoiser, batch, group_generators(0, 0, rows), 1)  # no_grad inside
            seconds = time.perf_counter() - began
            if repeat:  # the first pass warms up
                entry = results.setdefault(name, {"seconds": [], "reward": float(step.metrics()["online/reward_mean"])})
                entry["seconds"].append(round(seconds, 3))
    return results


def table(results: dict[str, dict]) -> str:
    """The Markdown table: fastest and slowest seconds per collection, × the first set-up's fastest, reward."""
    first = min(next(iter(results.values()))["seconds"])
    lines = ["| set-up | s per collection (fastest) | slowest | × first set-up | mean reward of the samples |",
             "|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {min(r['seconds']):.2f} | {max(r['seconds']):.2f} | "
                     f"{min(r['seconds']) / first:.2f}× | {r['reward']:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from diffalign import toy

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(Path(toy.__file__).parent / "base_model"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    results = measure(args.model, repeats=args.repeats)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rollout_cost.json").write_text(json.dumps(results, indent=1))
    text = table(results)
    (out / "rollout_cost.md").write_text(f"Command: `python benchmarks/rollout_cost.py --repeats {args.repeats}`\n\n{text}\n")
    print(text)
    return 0


__all__ = ["SETUPS", "main", "measure", "table"]
