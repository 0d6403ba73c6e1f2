"""What CFG-free sampling and DPM-Solver++(2M) save in an online collection, and what they cost in
the reward of the samples, on the toy base model with the toy reward:

    python benchmarks/rollout_cost.py            # 3 timed repeats of each set-up, into benchmarks/results/
"""

from diffalign.benchmarks.rollout_cost import main

if __name__ == "__main__":
    raise SystemExit(main())
