r"""Filter noisy pairs out of a preference dataset (the same as `diffalign build filter`).

    python datasets_builders/filter_pairs.py data/pickapic_pairs --out data/pickapic_filtered --fraction 0.5 \
        --reward pickscore --text-model openai/clip-vit-large-patch14

Run it again with the same arguments to resume an interrupted build.
"""

import sys

from diffalign.cli import main

if __name__ == "__main__":
    sys.exit(main(["build", "filter", *sys.argv[1:]]))
