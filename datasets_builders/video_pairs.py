"""Build a video preference dataset from human video pairs (the same as `diffalign build video-pairs`).

    python datasets_builders/video_pairs.py /data/video_prefs/train --out data/video_pairs
    python datasets_builders/video_pairs.py pairs.jsonl --out data/video_pairs_ties --keep-ties

Run it again with the same arguments to resume an interrupted build. Needs the `video` extra
(PyAV): pip install 'diffalign[video]'.
"""

import sys

from diffalign.cli import main

if __name__ == "__main__":
    sys.exit(main(["build", "video-pairs", *sys.argv[1:]]))
