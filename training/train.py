"""Train with a YAML config: the same as `diffalign train`.

    accelerate launch --config_file training/accelerate/single_gpu.yaml training/train.py \\
        --config training/configs/sdxl/diffusion_dpo.yaml optim.lr=1e-5
"""

import sys

from diffalign.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
