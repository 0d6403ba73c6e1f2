r"""Build a synthetic ranked dataset (the same as `diffalign build synthetic`).

    python datasets_builders/synthetic_ranked.py prompts.txt --out data/synpic \
        --generator stabilityai/stable-diffusion-xl-base-1.0 --generator runwayml/stable-diffusion-v1-5 \
        --reward pickscore --reward hpsv2.1 --reward-stats stats.json --images-per-prompt 4 --pairs best-worst
    accelerate launch datasets_builders/synthetic_ranked.py prompts.txt --out data/synpic ...   # many GPUs

Run it again with the same arguments to resume an interrupted build.
"""

import sys

from diffalign.cli import main

if __name__ == "__main__":
    sys.exit(main(["build", "synthetic", *sys.argv[1:]]))
