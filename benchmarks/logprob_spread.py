"""The ratio an online RL objective clips, before any update: a step's log-probability recomputed
in fp32 and under bf16 autocast against the fp32 sampler's, per tiny family and noise rule.

    python benchmarks/logprob_spread.py                      # every tiny family, 10 steps
    python benchmarks/logprob_spread.py --families sd3 --dtypes bfloat16
"""

from diffalign.benchmarks.logprob_spread import main

if __name__ == "__main__":
    raise SystemExit(main())
