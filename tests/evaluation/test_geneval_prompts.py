"""GenEval's prompt generator and metadata reader (diffalign.evaluation.geneval_prompts).

Expected values come from GenEval's published prompt set (djghosh13/geneval prompts/), worked out by hand here.
"""

import json
from collections import Counter

import pytest

from diffalign.evaluation.geneval_prompts import CLASSNAMES, MetadataError, generate_prompts, read_metadata


def test_generator_reproduces_the_published_tag_counts():
    records = generate_prompts()
    counts = Counter(r["tag"] for r in records)
    assert dict(counts) == {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94,
                            "position": 100, "color_attr": 100}
    assert len(records) == 553
    assert {r["include"][0]["class"] for r in records if r["tag"] == "single_object"} == set(CLASSNAMES)
    for r in records:
        assert r["prompt"].startswith("a photo of ")
        if r["tag"] == "counting":
            assert r["exclude"] == [{"class": r["include"][0]["class"], "count": r["include"][0]["count"] + 1}]
            assert 2 <= r["include"][0]["count"] <= 4
        if r["tag"] in ("colors", "color_attr"):
            assert all(c["class"] != "person" for c in r["include"])
        if r["tag"] == "position":
            assert r["include"][1]["position"][1] == 0
            a, b = r["include"][1]["class"], r["include"][0]["class"]
            assert r["prompt"].endswith(f" {r['include'][1]['position'][0]} {'an' if b[0] in 'aeiou' else 'a'} {b}")
            assert a in r["prompt"]
    assert any(r["prompt"] == "a photo of an umbrella" for r in records)  # "an" before a vowel
    plurals = [r["prompt"] for r in records if r["tag"] == "counting" and r["include"][0]["class"].endswith("s")]
    assert plurals and all(p.endswith("ses") for p in plurals)  # "bus" -> "buses"


def test_generator_seed_and_size():
    assert generate_prompts(seed=1, n=5) != generate_prompts(seed=2, n=5)
    assert generate_prompts(seed=1, n=5) == generate_prompts(seed=1, n=5)
    small = Counter(r["tag"] for r in generate_prompts(seed=1, n=5))
    assert small["single_object"] == 80 and all(small[t] <= 5 for t in small if t != "single_object")


def test_read_metadata(tmp_path):
    good = tmp_path / "evaluation_metadata.jsonl"
    rows = [{"tag": "counting", "include": [{"class": "cat", "count": 2}], "exclude": [{"class": "cat", "count": 3}],
             "prompt": "a photo of two cats"}, {"tag": "single_object", "include": [{"class": "dog", "count": 1}],
                                                 "prompt": "a photo of a dog"}]
    good.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert read_metadata(good) == rows
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"tag": "shapes", "include": [], "prompt": "x"}))
    with pytest.raises(MetadataError, match="unknown tag"):
        read_metadata(bad)
    bad.write_text('{"prompt": "x"}')
    with pytest.raises(MetadataError, match=":1: a record needs"):
        read_metadata(bad)
