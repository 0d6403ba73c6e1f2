"""Accuracy of a reward model on held-out human pairs (Pick-a-Pic protocol, ties included), to
check a reward model before trusting it. The logic lives in ``diffalign.rewards.agreement``.

    python reward_models/agreement.py --reward pickscore \
        --validation yuvalkirstain/pickapic_v2 --test yuvalkirstain/pickapic_v2 --out agreement.json

Local Parquet files of the ``validation_unique`` / ``test_unique`` splits work too
(``--validation data/validation_unique-*.parquet --test data/test_unique-*.parquet``).
"""

import sys

from diffalign.rewards.agreement import main

if __name__ == "__main__":
    sys.exit(main())
