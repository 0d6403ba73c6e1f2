r"""Give each image of a preference dataset its own caption for DCPO (the same as `diffalign build dual-captions`).

    python datasets_builders/dual_captions.py data/pickapic_pairs --out data/pairs_dcpo_h --strategy hybrid \
        --captioner Salesforce/blip-image-captioning-large --text-model google/flan-t5-large --level medium

Run it again with the same arguments to resume an interrupted build.
"""

import sys

from diffalign.cli import main

if __name__ == "__main__":
    sys.exit(main(["build", "dual-captions", *sys.argv[1:]]))
