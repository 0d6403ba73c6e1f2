"""Diagnose SPO on the toy: the same benchmark run, with the toy reward itself as SPO's
step-aware scorer (an oracle that scores each candidate's decoded x̂0), instead of the step-aware
model trained on the toy pairs. If SPO gains here and not with the learned model, the method
works and its scorer is what limits it (benchmarks/results/toy.md, "SPO and Diffusion-DRO").

    python examples/toy_spo_oracle.py --out outputs/toy_spo_oracle     # about 6 minutes on 2 cores
"""

import argparse
import json

import torch

import diffalign.steps.spo as spo_step
from diffalign.toy.benchmark import BenchmarkConfig, run_benchmark
from diffalign.toy.reward import toy_reward


class ToyRewardScorer(torch.nn.Module):
    """``score_noisy`` as the step-aware model has it: 100 × the toy reward, whatever the time."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # the step reads the scorer's device from a parameter

    def score_noisy(self, pixels, prompts, t):
        return 100 * toy_reward(pixels.float(), list(prompts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/toy_spo_oracle")
    args = parser.parse_args()
    # The one thing changed: where SPO's step gets its scorer.
    spo_step.load_preference_model = lambda config, device: ToyRewardScorer().to(device)
    results = run_benchmark(args.out, BenchmarkConfig(objectives=("spo",), step_aware_steps=1))
    spo = results["objectives"]["spo"]
    print(json.dumps({key: spo[key] for key in ("gain", "win_rate", "prompt_following", "seconds_per_step")}, indent=2))


if __name__ == "__main__":
    main()
