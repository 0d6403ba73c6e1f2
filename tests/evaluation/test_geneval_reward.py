"""GenEval as an online reward (evaluation/geneval_reward.py): Flow-GRPO's partial score, by hand.

Detections are hand-made (a fixed detector), so each score is the mean of terms written out in the
test (the terms of reward_server/gen_eval.py evaluate_reward, yifan123/reward-server 92ac29f).
"""

import pytest
import torch

from diffalign.evaluation.geneval_reward import GenEvalReward, GenEvalRewardError, partial_score
from diffalign.evaluation.geneval_rules import Detection, keep_confident
from diffalign.rewards.online import load_online_rewards


def boxes(label, *lefts, score=0.95, top=0.0):
    """Detections of ``label``: 10 × 10 boxes at x = each of ``lefts``."""
    return [Detection(label, (x, top, x + 10.0, top + 10.0), score) for x in lefts]


class FixedDetector:
    """Finds the same objects in every image."""

    name = "fixed"

    def __init__(self, detections):
        self.detections = detections

    def detect(self, image):
        return list(self.detections)


def one_dog_one_cat():
    """A factory for the loader's ``detector: module:factory`` option: a dog at x = 0, a cat at x = 40."""
    return FixedDetector(boxes("dog", 0.0) + boxes("cat", 40.0))


class Always:
    """A colour classifier that calls every object ``colour``."""

    name = "always"

    def __init__(self, colour):
        self.colour = colour

    def classify(self, image, objects, classname):
        return [self.colour] * len(objects)


TWO = {"tag": "two_object", "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1}],
       "prompt": "a photo of a dog and a cat"}
THREE_DOGS = {"tag": "counting", "include": [{"class": "dog", "count": 3}], "exclude": [{"class": "dog", "count": 4}],
              "prompt": "a photo of three dogs"}
RED_DOG = {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}], "prompt": "a photo of a red dog"}
CAT_RIGHT_OF_DOG = {"tag": "position", "prompt": "a photo of a cat right of a dog",
                    "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["right of", 0]}]}


def score(detections, record, colors=None):
    return partial_score(None, keep_confident(detections, record["tag"]), record, colors)


def test_two_objects_both_found_score_one_and_one_missing_half():
    assert score(boxes("dog", 0) + boxes("cat", 40), TWO) == (1.0, True)
    assert score(boxes("dog", 0), TWO) == (0.5, False)  # terms: dog 1, cat 1 − 1/1 = 0


def test_counting_scores_the_distance_to_the_count_and_ignores_excludes():
    assert score(boxes("dog", 0, 20), THREE_DOGS) == (pytest.approx(2 / 3), False)  # 1 − |3 − 2| / 3
    assert score(boxes("dog", 0, 20, 40, 60), THREE_DOGS) == (pytest.approx(2 / 3), False)  # 4 found: the exclude is not read
    # counting keeps detections above 0.9 only: the 0.5 one does not count
    assert score(boxes("dog", 0, 20, 40) + boxes("dog", 60, score=0.5), THREE_DOGS) == (1.0, True)
    one_dog = {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}
    assert score(boxes("dog", 0, 20, 40), one_dog) == (-1.0, False)  # 1 − |1 − 3| / 1: below 0, as the server gives


def test_colour_adds_a_term_or_a_zero_when_the_count_is_wrong():
    assert score(boxes("dog", 0), RED_DOG, Always("red")) == (1.0, True)
    assert score(boxes("dog", 0), RED_DOG, Always("blue")) == (0.5, False)  # terms: count 1, colour 0
    assert score([], RED_DOG, Always("red")) == (0.0, False)  # terms: count 0, and 0 for the colour not checked
    with pytest.raises(GenEvalRewardError, match="colour classifier"):
        score(boxes("dog", 0), RED_DOG)


def test_position_terms_follow_the_server_including_its_one_after_a_failure():
    assert score(boxes("dog", 0) + boxes("cat", 40), CAT_RIGHT_OF_DOG) == (1.0, True)  # terms 1, 1, 1
    # the cat left of the dog: terms dog 1, cat 1, then the server's 0.0 and 1.0 → 3 / 4
    assert score(boxes("dog", 40) + boxes("cat", 0), CAT_RIGHT_OF_DOG) == (0.75, False)
    assert score(boxes("cat", 40), CAT_RIGHT_OF_DOG) == (pytest.approx(1 / 3), False)  # dog 0; cat 1, no target 0
    assert score(boxes("dog", 0), CAT_RIGHT_OF_DOG) == (pytest.approx(1 / 3), False)  # dog 1; cat 0 and 0 for its position


def test_the_reward_scores_tensors_against_each_images_record():
    reward = GenEvalReward(FixedDetector(boxes("dog", 0) + boxes("cat", 40)), Always("red"))
    images = torch.rand(3, 3, 64, 64)
    scores = reward.score(images, ["", "", ""], [TWO, THREE_DOGS, RED_DOG])
    torch.testing.assert_close(scores, torch.tensor([1.0, 1 / 3, 1.0]))  # three dogs: 1 − |3 − 1| / 3
    assert [strict for _, strict in reward.evaluate(images, [TWO, THREE_DOGS, RED_DOG])] == [True, False, True]
    with pytest.raises(GenEvalRewardError, match="pass metadata="):
        reward.score(images, ["", "", ""], None)
    with pytest.raises(GenEvalRewardError, match=r"metadata\[1\] is not a GenEval record"):
        reward.score(images[:2], ["", ""], [TWO, {"prompt": "a dog"}])


def test_the_online_loader_builds_geneval_from_its_options():
    specs = [{"name": "geneval", "weight": 2.0, "batch_size": 2,
              "options": {"detector": "test_geneval_reward:one_dog_one_cat", "colors": "mean-rgb"}}]
    rewards = load_online_rewards(specs, "cpu")
    scores = rewards(torch.rand(3, 3, 64, 64), ["a", "b", "c"], [TWO, THREE_DOGS, CAT_RIGHT_OF_DOG])
    torch.testing.assert_close(scores["geneval"], torch.tensor([1.0, 1 / 3, 1.0]))
    torch.testing.assert_close(rewards.total(scores), torch.tensor([2.0, 2 / 3, 2.0]))
