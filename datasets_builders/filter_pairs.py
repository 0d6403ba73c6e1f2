r"""Filter noisy pairs out of a preference dataset (the same as `diffalign build filter`).

    python datasets_builders/filter_pairs.py data/pickapic_pairs --out data/pickapic_filtered --fraction 0.5 \
        --reward pickscore --text-model openai/clip-vit-large-patch14

Run it again with the same arguments to resume an interrupted build.
"""

import argparse
import sys

from diffalign.data import filtering

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=filtering.__doc__.split("\n\n")[0])
    filtering.add_arguments(parser)
    sys.exit(filtering.run(parser.parse_args()))
