#!/usr/bin/env bash
# A preference objective on SD3-Medium with 8 GPUs (copy and edit); full fine-tuning via DeepSpeed ZeRO-2:
#   OBJECTIVE=rank_dpo training/launch/sd3.sh lora=null
# resume=latest: a requeued job (after SIGTERM from the scheduler) continues from its checkpoint.
set -euo pipefail
OBJECTIVE=${OBJECTIVE:-diffusion_dpo}
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-training/accelerate/multi_gpu.yaml}
accelerate launch --config_file "$ACCELERATE_CONFIG" -m diffalign train \
  --config "training/configs/sd3/${OBJECTIVE}.yaml" \
  output_dir="outputs/sd3-${OBJECTIVE}" resume=latest "$@"
