"""GenEval's colour classifiers and masked crops (diffalign.evaluation.geneval_models); the default
detector, which needs scipy, is tested in test_geneval_detector.py."""

import numpy as np
from PIL import Image

from diffalign.evaluation.geneval_models import ClipColorClassifier, MeanColorClassifier, masked_crop
from diffalign.evaluation.geneval_prompts import COLORS
from diffalign.evaluation.geneval_rules import Detection

IMAGE = Image.new("RGB", (100, 100), "white")


def det(label, box, score=0.95, mask=None):
    return Detection(label, tuple(float(v) for v in box), score, mask)


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


def test_clip_colour_classifier_plumbing(tmp_path):
    from diffalign.rewards.tiny import save_tiny_clip

    clf = ClipColorClassifier(str(save_tiny_clip(tmp_path / "clip")))
    mask = np.zeros((100, 100), dtype=bool)
    mask[10:30, 10:30] = True
    objects = [det("car", (0, 0, 40, 40), mask=mask), det("car", (50, 50, 90, 80))]
    colors = clf.classify(IMAGE, objects, "car")
    assert len(colors) == 2 and set(colors) <= set(COLORS)
    assert list(clf._text) == ["car"] and clf._text["car"].shape[0] == len(COLORS)
    assert clf.classify(IMAGE, [], "car") == [] and clf.name.startswith("clip:")
