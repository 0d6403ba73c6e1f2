"""The toy alignment benchmark: every objective on a tiny model, on the CPU, with no downloads.

    python examples/toy_alignment.py --out outputs/toy_benchmark                   # the protocol, all objectives
    python examples/toy_alignment.py --out outputs/toy_dpo --objective diffusion_dpo --quick
    python examples/toy_alignment.py --out outputs/toy_spo --objective spo --objective spo_oracle
    python examples/toy_alignment.py --out outputs/toy_online --quick --train-seeds 3 \
        --objective diffusion_dpo --objective grpo --objective grpo_fast --objective mixgrpo   # online vs offline

The protocol (diffalign.toy.benchmark.PROTOCOL): each objective at learning rates 1e-4, 3e-4 and
1e-3, the one chosen on the curve seeds, then 3 training seeds at it, evaluated on held-out
seeds. ``--quick``: one seed at each objective's toy learning rate (what ``diffalign demo`` runs).
The variants (diffalign.toy.benchmark.VARIANTS): ``spo_oracle`` is SPO with the toy reward as
its step-aware scorer; ``grpo_fast`` and ``mixgrpo`` are grpo with Flow-GRPO-Fast's and MixGRPO's
SDE windows. With ``diffusion_dpo`` in the run, every other objective also trains for Diffusion-DPO's
wall-clock time and is evaluated there (the report's last table). ``--landing exact``: InPO and
SmPO invert onto t (6 and 4 equal steps, what the official grids cost on average), all else
as by default: the ablation of benchmarks/results/toy.md.

Writes results.json, report.md, reward_curve.png and grid_<objective>.png to --out. The base
model ships with the package (its pretraining is ``python -m diffalign.toy.pretrain``).
"""

import argparse
from dataclasses import replace

from diffalign.toy.benchmark import ALL_OBJECTIVES, PROTOCOL, VARIANTS, BenchmarkConfig, run_benchmark
from diffalign.toy.report import cost_table, equal_time_table, markdown_table, sweep_table

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/toy_benchmark", help="output folder")
    parser.add_argument("--objective", action="append", choices=(*ALL_OBJECTIVES, *VARIANTS),
                        help=f"objective or variant (repeatable; default: all, and {', '.join(VARIANTS)})")
    parser.add_argument("--quick", action="store_true", help="each objective's toy learning rate, no sweep, one seed")
    parser.add_argument("--train-seeds", type=int, default=None,
                        help="training seeds per objective (default: the protocol's 3, or 1 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: 2 epochs)")
    parser.add_argument("--landing", choices=("official", "exact"), default="official",
                        help="InPO's and SmPO's inversion landing (default: official)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the first training seed and the evaluation")
    args = parser.parse_args()
    config = BenchmarkConfig(objectives=tuple(args.objective or (*ALL_OBJECTIVES, *VARIANTS)), seed=args.seed)
    if not args.quick:
        config = replace(config, **PROTOCOL)
    if args.train_seeds:
        config = replace(config, train_seeds=args.train_seeds)
    if args.steps:
        config = replace(config, train_steps=args.steps)
    if args.landing == "exact":
        for name, steps in (("inpo", 6), ("smpo", 4)):
            config.objective_settings[name]["inversion"] = {"landing": "exact", "steps": steps}
    results = run_benchmark(args.out, config)
    print(markdown_table(results) + sweep_table(results) + cost_table(results) + equal_time_table(results))
    print(f"report in {args.out}/report.md")
