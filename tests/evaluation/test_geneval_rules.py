"""GenEval rule engine over synthetic detections, aggregation, the prompt generator and metadata reader.

Expected values come from GenEval's rules as written in djghosh13/geneval evaluation/evaluate_images.py
and its published prompt set, worked out by hand here.
"""

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from diffalign.evaluation.geneval import (
    CLASSNAMES, Detection, MeanColorClassifier, MetadataError, Thresholds, evaluate_image, generate_prompts,
    keep_confident, masked_crop, read_metadata, relative_position, summarise,
)

IMAGE = Image.new("RGB", (100, 100), "white")


def det(label, box, score=0.95, mask=None):
    return Detection(label, tuple(float(v) for v in box), score, mask)


class FixedColors:
    """Says the colours it was built with, in object order; records what it was asked."""

    name = "fixed"

    def __init__(self, *colors):
        self.colors, self.calls = list(colors), []

    def classify(self, image, objects, classname):
        self.calls.append((classname, len(objects)))
        return self.colors[: len(objects)]


def judge(detections, record, colors=None):
    kept = keep_confident(detections, record["tag"])
    return evaluate_image(IMAGE, kept, record, colors)[0]


# ----------------------------------------------------------------------------- prompts
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


# ----------------------------------------------------------------------------- thresholds, counting
def test_thresholds_and_top_n_selection():
    dets = [det("cat", (0, 0, 10, 10), 0.3), det("cat", (0, 0, 10, 10), 0.31), det("cat", (0, 0, 10, 10), 0.8),
            det("dog", (0, 0, 5, 5), 0.2)]
    kept = keep_confident(dets, "single_object")
    assert [d.score for d in kept["cat"]] == [0.8, 0.31]  # strictly above 0.3, most confident first
    assert "dog" not in kept
    many = [det("cat", (i, 0, i + 1, 1), 0.5 + i / 100) for i in range(20)]
    assert len(keep_confident(many, "two_object")["cat"]) == 16
    # Suppression only when max_overlap < 1.
    twins = [det("cat", (0, 0, 10, 10), 0.9), det("cat", (0, 0, 10, 10), 0.8)]
    assert len(keep_confident(twins, "single_object")["cat"]) == 2
    assert len(keep_confident(twins, "single_object", Thresholds(max_overlap=0.5))["cat"]) == 1


def test_counting_is_exact_n_at_the_0_9_threshold():
    record = {"tag": "counting", "include": [{"class": "cat", "count": 2}], "exclude": [{"class": "cat", "count": 3}],
              "prompt": "a photo of two cats"}
    two = [det("cat", (0, 0, 10, 10), 0.95), det("cat", (20, 0, 30, 10), 0.92)]
    assert judge(two, record)
    assert not judge(two + [det("cat", (40, 0, 50, 10), 0.91)], record)  # three confident cats: the exclude fires
    assert judge(two + [det("cat", (40, 0, 50, 10), 0.9)], record)  # 0.9 is not above the counting threshold
    assert not judge([two[0], det("cat", (20, 0, 30, 10), 0.85)], record)  # only one above 0.9
    # The same 0.85 detection counts for a non-counting tag (threshold 0.3).
    both = {"tag": "two_object", "include": [{"class": "cat", "count": 2}], "prompt": "x"}
    assert judge([two[0], det("cat", (20, 0, 30, 10), 0.85)], both)


def test_single_and_two_objects_and_exclude_or():
    single = {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}
    assert judge([det("dog", (0, 0, 5, 5))], single)
    assert not judge([det("cat", (0, 0, 5, 5))], single)
    assert judge([det("dog", (0, 0, 5, 5)), det("dog", (10, 0, 15, 5))], single)  # extra dogs are fine without exclude
    pair = {"tag": "two_object", "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1}], "prompt": "x"}
    assert judge([det("dog", (0, 0, 5, 5)), det("cat", (10, 0, 15, 5))], pair)
    assert not judge([det("dog", (0, 0, 5, 5))], pair)  # includes are ANDed
    excl = {"tag": "single_object", "include": [{"class": "dog", "count": 1}],
            "exclude": [{"class": "cat", "count": 1}, {"class": "bird", "count": 2}], "prompt": "x"}
    assert judge([det("dog", (0, 0, 5, 5)), det("bird", (10, 0, 15, 5))], excl)
    assert not judge([det("dog", (0, 0, 5, 5)), det("cat", (10, 0, 15, 5))], excl)  # excludes are ORed
    assert not judge([det("dog", (0, 0, 5, 5)), det("bird", (10, 0, 15, 5)), det("bird", (20, 0, 25, 5))], excl)


# ----------------------------------------------------------------------------- colours
def test_colour_majority_on_the_most_confident_objects():
    record = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a photo of a red car"}
    cars = [det("car", (0, 0, 10, 10), 0.9), det("car", (20, 0, 30, 10), 0.8)]
    colors = FixedColors("red", "blue")
    assert judge(cars, record, colors)
    assert colors.calls == [("car", 1)]  # only the top-1 car is classified
    assert not judge(cars, record, FixedColors("blue", "red"))
    two = {"tag": "colors", "include": [{"class": "car", "count": 2, "color": "red"}], "prompt": "x"}
    assert not judge(cars, two, FixedColors("red", "blue"))  # needs N crops of the colour
    assert judge(cars, two, FixedColors("red", "red"))
    with pytest.raises(ValueError, match="colour classifier"):
        judge(cars, record, None)


def test_color_attr_needs_both_bindings():
    record = {"tag": "color_attr", "include": [{"class": "car", "count": 1, "color": "red"},
                                               {"class": "bus", "count": 1, "color": "blue"}], "prompt": "x"}

    class ByClass:
        name = "by-class"

        def __init__(self, table):
            self.table = table

        def classify(self, image, objects, classname):
            return [self.table[classname]] * len(objects)

    dets = [det("car", (0, 0, 10, 10)), det("bus", (20, 0, 30, 10))]
    assert judge(dets, record, ByClass({"car": "red", "bus": "blue"}))
    assert not judge(dets, record, ByClass({"car": "blue", "bus": "red"}))  # swapped attributes


def test_mean_colour_classifier_uses_the_mask_and_crop_pastes_on_grey():
    image = Image.new("RGB", (20, 10), (240, 240, 240))
    image.paste((30, 60, 220), (2, 2, 6, 6))  # a blue square inside a white box region
    mask = np.zeros((10, 20), dtype=bool)
    mask[2:6, 2:6] = True
    box = (0, 0, 10, 10)
    clf = MeanColorClassifier()
    assert clf.classify(image, [det("car", box, mask=mask)], "car") == ["blue"]
    assert clf.classify(image, [det("car", box)], "car") == ["white"]  # whole box: mostly white
    crop = masked_crop(image, det("car", box, mask=mask))
    assert crop.size == (10, 10)
    assert crop.getpixel((0, 0)) == (153, 153, 153) and crop.getpixel((3, 3)) == (30, 60, 220)


# ----------------------------------------------------------------------------- position
def test_relative_position_margin():
    a, b = det("dog", (0, 0, 10, 10)), det("cat", (20, 0, 30, 10))
    assert relative_position(a, b) == {"left of"}
    assert relative_position(b, a) == {"right of"}
    assert relative_position(det("dog", (0, 0, 10, 10)), det("cat", (0, 20, 10, 30))) == {"above"}
    assert relative_position(det("dog", (0, 20, 10, 30)), det("cat", (0, 0, 10, 10))) == {"below"}
    # Centres 1.9 apart, widths 10 + 10: margin 0.1 * 20 = 2 swallows the offset -> no relation.
    assert relative_position(det("dog", (0, 0, 10, 10)), det("cat", (1.9, 0, 11.9, 10))) == set()
    # 2.5 apart: 0.5 left after the margin, over a length of 2.5 -> dx = -0.2, not past -0.5 -> none either.
    assert relative_position(det("dog", (0, 0, 10, 10)), det("cat", (2.5, 0, 12.5, 10))) == set()
    # 5 apart: 3 left over 5 -> dx = -0.6 -> left of.
    assert relative_position(det("dog", (0, 0, 10, 10)), det("cat", (5, 0, 15, 10))) == {"left of"}
    # Diagonal 45°: offsets (-20, -20), margin 2 each -> (-18, -18)/28.3 = -0.64 both -> left of and above.
    assert relative_position(det("dog", (0, 0, 10, 10)), det("cat", (20, 20, 30, 30))) == {"left of", "above"}
    # Wider margin: 0.3 * 20 = 6 -> (-14, -14)/28.3 = -0.495 -> nothing.
    assert relative_position(det("dog", (0, 0, 10, 10)), det("cat", (20, 20, 30, 30)), margin=0.3) == set()


def test_position_rule_over_groups():
    record = {"tag": "position", "include": [{"class": "cat", "count": 1},
                                             {"class": "dog", "count": 1, "position": ["left of", 0]}], "prompt": "x"}
    assert judge([det("dog", (0, 0, 10, 10)), det("cat", (50, 0, 60, 10))], record)
    assert not judge([det("dog", (50, 0, 60, 10)), det("cat", (0, 0, 10, 10))], record)
    assert not judge([det("dog", (0, 0, 10, 10)), det("cat", (1, 0, 11, 10))], record)  # overlap within margin
    assert not judge([det("dog", (0, 0, 10, 10))], record)  # no target
    # Only the most confident dog is checked (count 1).
    dogs = [det("dog", (0, 0, 10, 10), 0.9), det("dog", (80, 0, 90, 10), 0.5), det("cat", (50, 0, 60, 10))]
    assert judge(dogs, record)
    dogs[1].score = 0.99
    assert not judge(dogs, record)
    _, reason = evaluate_image(IMAGE, keep_confident([det("dog", (0, 0, 10, 10))], "position"), record)
    assert "no target" in reason


# ----------------------------------------------------------------------------- aggregation
def test_overall_is_the_mean_of_tag_means():
    rows = ([{"tag": "single_object", "correct": c, "prompt_index": i} for i, c in enumerate([1, 1, 1, 0])]
            + [{"tag": "counting", "correct": c, "prompt_index": 10} for c in [0, 0]]
            + [{"tag": "position", "correct": True, "prompt_index": 11}, {"tag": "position", "correct": False, "prompt_index": 12}])
    s = summarise(rows)
    assert s["tags"] == {"single_object": 0.75, "counting": 0.0, "position": 0.5}
    assert s["overall"] == pytest.approx((0.75 + 0 + 0.5) / 3)  # not the image mean 4/8
    assert s["images"] == pytest.approx(4 / 8)
    assert s["prompts"] == pytest.approx(4 / 7)  # prompts 0,1,2,11 of 7 have a correct image
    with pytest.raises(ValueError):
        summarise([])


def test_clip_colour_classifier_plumbing(tmp_path):
    from diffalign.evaluation.geneval import COLORS, ClipColorClassifier
    from diffalign.rewards.tiny import save_tiny_clip

    clf = ClipColorClassifier(str(save_tiny_clip(tmp_path / "clip")))
    mask = np.zeros((100, 100), dtype=bool)
    mask[10:30, 10:30] = True
    objects = [det("car", (0, 0, 40, 40), mask=mask), det("car", (50, 50, 90, 80))]
    colors = clf.classify(IMAGE, objects, "car")
    assert len(colors) == 2 and set(colors) <= set(COLORS)
    assert list(clf._text) == ["car"] and clf._text["car"].shape[0] == len(COLORS)
    assert clf.classify(IMAGE, [], "car") == [] and clf.name.startswith("clip:")
