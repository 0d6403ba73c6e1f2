"""Score images with reward models: the same as ``diffalign score`` (see ``--help``).

    python reward_models/score.py --reward pickscore --reward hpsv2.1 --images outputs/samples \
        --prompts outputs/samples/prompts.txt --out scores.parquet
"""

import sys

from diffalign.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
