"""Training-step benchmark: diffalign's trainer against diffusers' DPO SDXL script (the peer) and a naive loop.

CPU, SDXL proportions, with the peer from your diffusers checkout (the README's tables: peer_table.py):
    python benchmarks/train_step.py --size mini --batch-size 1 \
        --peer-script ~/diffusers/examples/research_projects/diffusion_dpo/train_diffusion_dpo_sdxl.py
CPU, the unit tests' tiny SDXL:
    python benchmarks/train_step.py
GPU, real-size SDXL at 1024 px, bf16, LoRA rank 64, with FLOPs and MFU:
    python benchmarks/train_step.py --size real --family sdxl --lora-rank 64 --batch-size 1 --flops \
        --setups naive diffalign diffalign+ckpt

See ``diffalign/benchmarks/train_step_setups.py`` for what each set-up does.
"""

from diffalign.benchmarks.train_step import main

if __name__ == "__main__":
    raise SystemExit(main())
