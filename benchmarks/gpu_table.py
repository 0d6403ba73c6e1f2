"""The GPU table of issue 37: real-size SDXL and SD3-Medium at 1024 px, bf16, LoRA and full
fine-tuning, against diffusers' DPO SDXL script (the peer) and the naive loop, with MFU.

    python benchmarks/gpu_table.py --peer-script ~/diffusers/examples/research_projects/diffusion_dpo/train_diffusion_dpo_sdxl.py

Without a GPU, ``--reduced`` runs the same plan on the CPU with the tiny models (it tests the
wiring, it measures nothing). See ``diffalign/benchmarks/gpu_table.py``.
"""

from diffalign.benchmarks.gpu_table import table_main

if __name__ == "__main__":
    raise SystemExit(table_main())
