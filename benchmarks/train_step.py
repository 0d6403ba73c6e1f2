"""Training-step benchmark: naive per-paper Diffusion-DPO loop vs diffalign's trainer, one process.

CPU, SDXL proportions (the README's table):
    python benchmarks/train_step.py --size mini --batch-size 1
CPU, the unit tests' tiny SDXL:
    python benchmarks/train_step.py
GPU, real-size SDXL at 1024 px, bf16, LoRA rank 64, with FLOPs and MFU:
    python benchmarks/train_step.py --size real --family sdxl --lora-rank 64 --batch-size 1 --flops \
        --setups naive diffalign diffalign+ckpt

See ``diffalign/benchmarks/train_step.py`` for what each set-up does.
"""

from diffalign.benchmarks.train_step import main

if __name__ == "__main__":
    raise SystemExit(main())
