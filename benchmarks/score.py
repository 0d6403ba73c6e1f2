"""Scoring throughput per reward model: one image per ``score`` call vs batched calls.

Example (every registered reward, tiny random models built offline, no downloads):
    python benchmarks/score.py --images 32 --batch-size 16 --out benchmarks/results

Real weights (a local folder, file or hub id per reward):
    python benchmarks/score.py --rewards pickscore=yuvalkirstain/PickScore_v1 hpsv2.1=/models/hps --device cuda
"""

from diffalign.benchmarks.score import main

if __name__ == "__main__":
    raise SystemExit(main())
