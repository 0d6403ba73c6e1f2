"""The toy alignment benchmark: every objective on a tiny model, on the CPU, with no downloads.

    python examples/toy_alignment.py --out outputs/toy_benchmark                   # the protocol, all objectives
    python examples/toy_alignment.py --out outputs/toy_dpo --objective diffusion_dpo --quick
    python examples/toy_alignment.py --out outputs/toy_spo --objective spo --objective spo_oracle

The protocol (diffalign.toy.benchmark.PROTOCOL): each objective at learning rates 1e-4, 3e-4 and
1e-3, the one chosen on the curve seeds, then 3 training seeds at it, evaluated on held-out
seeds. ``--quick``: one seed at each objective's toy learning rate (what ``diffalign demo`` runs).
``spo_oracle`` is SPO with the toy reward as its step-aware scorer. ``--landing exact``: InPO and
SmPO invert onto t (6 and 4 equal steps, what the official grids cost on average), all else
as by default: the ablation of benchmarks/results/toy.md.

Writes results.json, report.md, reward_curve.png and grid_<objective>.png to --out. The base
model ships with the package (its pretraining is ``python -m diffalign.toy.pretrain``).
"""

import argparse
from dataclasses import replace

from diffalign.toy.benchmark import ALL_OBJECTIVES, ORACLE, PROTOCOL, BenchmarkConfig, run_benchmark
from diffalign.toy.report import markdown_table, sweep_table

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/toy_benchmark", help="output folder")
    parser.add_argument("--objective", action="append", choices=(*ALL_OBJECTIVES, ORACLE),
                        help="objective (repeatable; default: all, and spo_oracle)")
    parser.add_argument("--quick", action="store_true", help="one seed at each objective's toy learning rate, no sweep")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: 2 epochs)")
    parser.add_argument("--landing", choices=("official", "exact"), default="official",
                        help="InPO's and SmPO's inversion landing (default: official)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the first training seed and the evaluation")
    args = parser.parse_args()
    config = BenchmarkConfig(objectives=tuple(args.objective or (*ALL_OBJECTIVES, ORACLE)), seed=args.seed)
    if not args.quick:
        config = replace(config, **PROTOCOL)
    if args.steps:
        config = replace(config, train_steps=args.steps)
    if args.landing == "exact":
        for name, steps in (("inpo", 6), ("smpo", 4)):
            config.objective_settings[name]["inversion"] = {"landing": "exact", "steps": steps}
    results = run_benchmark(args.out, config)
    print(markdown_table(results) + sweep_table(results))
    print(f"report in {args.out}/report.md")
