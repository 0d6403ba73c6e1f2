r"""Prompt-only datasets (K = 0) for online RL, split into train/ and eval/ by row id (the same as
`diffalign build prompts`).

    python datasets_builders/prompts.py --source prompts.txt --out data/prompts
    python datasets_builders/prompts.py --source geneval --out data/geneval_prompts --eval-fraction 0
    python datasets_builders/prompts.py --source pickapic.parquet --column caption --out data/pickapic_prompts --dedup

Run it again with the same arguments to resume an interrupted build.
"""

import sys

from diffalign.cli import main

if __name__ == "__main__":
    sys.exit(main(["build", "prompts", *sys.argv[1:]]))
