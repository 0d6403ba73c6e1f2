"""Build a preference dataset from Pick-a-Pic v2 (the same as `diffalign build pick-a-pic`).

    python datasets_builders/pick_a_pic.py /data/pickapic_v2/train --out data/pickapic_v2_pairs
    python datasets_builders/pick_a_pic.py "shards/*.tar" --out data/pairs --keep-ties

Run it again with the same arguments to resume an interrupted build.
"""

import argparse
import sys

from diffalign.data import pick_a_pic

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=pick_a_pic.__doc__.split("\n\n")[0])
    pick_a_pic.add_arguments(parser)
    sys.exit(pick_a_pic.run(parser.parse_args()))
