"""Build a preference dataset from Pick-a-Pic v2 (the same as `diffalign build pick-a-pic`).

    python datasets_builders/pick_a_pic.py /data/pickapic_v2/train --out data/pickapic_v2_pairs
    python datasets_builders/pick_a_pic.py "shards/*.tar" --out data/pairs --keep-ties

Run it again with the same arguments to resume an interrupted build.
"""

import sys

from diffalign.cli import main

if __name__ == "__main__":
    sys.exit(main(["build", "pick-a-pic", *sys.argv[1:]]))
