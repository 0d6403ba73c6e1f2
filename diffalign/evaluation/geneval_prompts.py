"""GenEval's prompts (Ghosh et al. 2023, arXiv:2310.11513; code djghosh13/geneval): its vocabulary,
our port of its prompt generator (``prompts/create_prompts.py``) and a reader of the official
``evaluation_metadata.jsonl``.

With its defaults (seed 43, 100 draws per tag) :func:`generate_prompts` gives the published 553
prompts (single_object 80, two_object 99, counting 80, colors 94, position 100, color_attr 100).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from diffalign.errors import DiffalignError

# The 80 COCO classes in COCO order, with GenEval's spellings (prompts/object_names.txt).
CLASSNAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock",
    "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
POSITIONS = ("left of", "right of", "above", "below")
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _plural(name: str) -> str:
    return f"{name}es" if name.endswith("s") else f"{name}s"


def _non_person(rng: np.random.Generator, size: int | None = None):
    """Class index(es) other than ``person``: draw from the 79 others, shifted past person's index."""
    person = CLASSNAMES.index("person")
    if size is None:
        return (int(rng.choice(len(CLASSNAMES) - 1)) + 1 + person) % len(CLASSNAMES)
    picks = rng.choice(len(CLASSNAMES) - 1, size=size, replace=False) + 1
    return [(int(i) + person) % len(CLASSNAMES) for i in picks]


def generate_prompts(seed: int = 43, n: int = 100, max_count: int = 4) -> list[dict]:
    """GenEval's evaluation metadata: every class once as ``single_object``, then ``n`` draws of each
    other tag, in order, from ``numpy.random.default_rng(seed)``; exact repeats dropped.

    Returns:
        Records ``{"tag", "include": [{"class", "count", "color"?, "position"?}], "exclude"?, "prompt"}``
        as in ``evaluation_metadata.jsonl`` (``position`` is ``[relation, group index]``).
    """
    rng = np.random.default_rng(seed)
    names = CLASSNAMES
    out = [{"tag": "single_object", "include": [{"class": names[i], "count": 1}], "prompt": f"a photo of {_article(names[i])}"}
           for i in rng.choice(len(names), size=len(names), replace=False)]
    for _ in range(n):
        a, b = (names[i] for i in rng.choice(len(names), size=2, replace=False))
        out.append({"tag": "two_object", "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
                    "prompt": f"a photo of {_article(a)} and {_article(b)}"})
    for _ in range(n):
        name = names[int(rng.choice(len(names)))]
        count = int(rng.integers(2, max_count, endpoint=True))
        out.append({"tag": "counting", "include": [{"class": name, "count": count}],
                    "exclude": [{"class": name, "count": count + 1}],
                    "prompt": f"a photo of {NUMBERS[count]} {_plural(name)}"})
    for _ in range(n):
        name = names[_non_person(rng)]
        color = COLORS[int(rng.choice(len(COLORS)))]
        out.append({"tag": "colors", "include": [{"class": name, "count": 1, "color": color}],
                    "prompt": f"a photo of {_article(color)} {name}"})
    for _ in range(n):
        a, b = (names[i] for i in rng.choice(len(names), size=2, replace=False))
        relation = POSITIONS[int(rng.choice(len(POSITIONS)))]
        out.append({"tag": "position", "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [relation, 0]}],
                    "prompt": f"a photo of {_article(a)} {relation} {_article(b)}"})
    for _ in range(n):
        a, b = (names[i] for i in _non_person(rng, size=2))
        ca, cb = (COLORS[i] for i in rng.choice(len(COLORS), size=2, replace=False))
        out.append({"tag": "color_attr", "include": [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
                    "prompt": f"a photo of {_article(ca)} {a} and {_article(cb)} {b}"})
    seen, unique = set(), []
    for record in out:
        key = json.dumps(record, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(record)
    return unique


class MetadataError(DiffalignError, ValueError):
    """An ``evaluation_metadata.jsonl`` line that is not a GenEval record; names file and line."""


def read_metadata(path: str | Path) -> list[dict]:
    """The records of GenEval's ``evaluation_metadata.jsonl`` (one JSON object a line), checked."""
    path = Path(path)
    if not path.is_file():
        raise MetadataError(f"{path}: no such file")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise MetadataError(f"{path}:{number}: not JSON ({err})") from err
        if not isinstance(record, dict) or not {"tag", "include", "prompt"} <= set(record):
            raise MetadataError(f"{path}:{number}: a record needs 'tag', 'include' and 'prompt'")
        if record["tag"] not in TAGS:
            raise MetadataError(f"{path}:{number}: unknown tag {record['tag']!r}; GenEval's are {', '.join(TAGS)}")
        records.append(record)
    if not records:
        raise MetadataError(f"{path}: holds no records")
    return records
