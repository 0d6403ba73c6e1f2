"""GenEval's rule engine over synthetic detections, and its aggregation (diffalign.evaluation.geneval_rules).

Expected values come from GenEval's rules as written in djghosh13/geneval evaluation/evaluate_images.py,
worked out by hand here.
"""

import pytest
from PIL import Image

from diffalign.evaluation.geneval_rules import Detection, Thresholds, evaluate_image, keep_confident, relative_position, summarise

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
