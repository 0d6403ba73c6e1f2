#!/usr/bin/env bash
# Diffusion-DPO on SDXL with 8 GPUs (copy and edit). Build the data and the latent cache first:
#   diffalign build pick-a-pic /data/pickapic_v2/train --out data/pickapic_pairs
#   accelerate launch --config_file training/accelerate/multi_gpu.yaml -m diffalign cache data/pickapic_pairs \
#       --model stabilityai/stable-diffusion-xl-base-1.0 --resolution 1024 --dtype bf16 --model-dtype bf16
# resume=latest: a requeued job (after SIGTERM from the scheduler) continues from its checkpoint.
set -euo pipefail
OBJECTIVE=${OBJECTIVE:-diffusion_dpo}
accelerate launch --config_file training/accelerate/multi_gpu.yaml -m diffalign train \
  --config "training/configs/sdxl/${OBJECTIVE}.yaml" \
  data.cache=true output_dir="outputs/sdxl-${OBJECTIVE}" resume=latest "$@"
