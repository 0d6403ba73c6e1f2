"""Generation throughput: naive one-prompt-at-a-time loop vs diffalign's batched generation paths.

Example (tiny random SDXL pipeline, CPU or GPU, no downloads):
    python benchmarks/generate.py --prompts 16 --steps 4 --out benchmarks/results

On a real checkpoint:
    python benchmarks/generate.py --model /models/sdxl-base --resolution 1024 --steps 30 --batch-size 8
"""

from diffalign.benchmarks.generate import main

if __name__ == "__main__":
    raise SystemExit(main())
