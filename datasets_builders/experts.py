r"""Expert images, one per row (K = 1), for Diffusion-DRO (the same as `diffalign build experts`).

    python datasets_builders/experts.py --from data/pickapic_pickscore --out data/experts_500 --by scores --top 500
    python datasets_builders/experts.py --from data/pickapic_pairs --out data/experts      # each row's best image

Run it again with the same arguments to resume an interrupted build.
"""

import sys

from diffalign.cli import main

if __name__ == "__main__":
    sys.exit(main(["build", "experts", *sys.argv[1:]]))
