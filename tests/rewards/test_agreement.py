"""Agreement with human pairs, Pick-a-Pic protocol: ties in labels and predictions, threshold choice."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from reward_images import png_bytes, smooth_images

from diffalign.rewards.agreement import (
    THRESHOLDS, Pair, accuracy, chance_accuracy, choose_threshold, credit, evaluate, human_label, main, pair_probs,
    predicted_label, read_pairs,
)


def test_human_labels():
    assert [human_label(x) for x in (1.0, 0.0, 0.5)] == ["0", "1", "tie"]


@pytest.mark.parametrize("p0, p1, threshold, expected", [
    (0.75, 0.25, 0.0, "0"), (0.25, 0.75, 0.0, "1"), (0.5, 0.5, 0.0, "tie"),      # equal -> tie even at 0
    (0.5625, 0.4375, 0.125, "tie"), (0.5625, 0.4375, 0.0625, "0"),               # |Δ| = 0.125: tie iff ≤ threshold
])
def test_predictions(p0, p1, threshold, expected):
    assert predicted_label(p0, p1, threshold) == expected


@pytest.mark.parametrize("label, prediction, expected", [
    ("0", "0", 1.0), ("tie", "tie", 1.0), ("0", "1", 0.0),
    ("tie", "0", 0.5), ("1", "tie", 0.5),  # a tie on either side earns half
])
def test_credit(label, prediction, expected):
    assert credit(label, prediction) == expected


PROBS = [(0.75, 0.25), (0.5625, 0.4375), (0.25, 0.75), (0.625, 0.375)]
LABELS = ["0", "tie", "0", "1"]


def test_accuracy_counts_ties_as_in_the_protocol():
    # threshold 0:     0 ✓ 1;  tie vs "0" 0.5;  "1" vs 0 → 0;  "0" vs 1 → 0          = 1.5 / 4
    # threshold 0.125: pair 2 becomes a tie → 1                                       = 2.0 / 4
    # threshold 0.25:  pair 4 (|Δ| = 0.25) also a tie → 0.5                           = 2.5 / 4
    # threshold 0.5:   everything a tie: 0.5 + 1 + 0.5 + 0.5                           = 2.5 / 4
    assert accuracy(PROBS, LABELS, 0.0) == 1.5 / 4
    assert accuracy(PROBS, LABELS, 0.125) == 2.0 / 4
    assert accuracy(PROBS, LABELS, 0.25) == 2.5 / 4
    assert accuracy(PROBS, LABELS, 0.5) == 2.5 / 4


def test_the_first_best_threshold_is_chosen():
    threshold, scores = choose_threshold(PROBS, LABELS, thresholds=(0.0, 0.125, 0.25, 0.5))
    assert threshold == 0.25 and scores == [1.5 / 4, 2.0 / 4, 2.5 / 4, 2.5 / 4]
    assert THRESHOLDS == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def test_chance_accuracy():
    # one tie in four at threshold 0.2: (0.2 + 0.8 / 2) · 1/4 + 3/4 · 0.5 = 0.525
    assert chance_accuracy(LABELS, 0.2) == pytest.approx(0.525)


class _FixedLogits:
    label = "fixed"

    def __init__(self, logits):
        self.logits = torch.tensor(logits)

    def preference_logits(self, images, prompts):
        assert len(images) == len(prompts) == len(self.logits)
        return self.logits


def test_pair_probabilities_are_the_softmax_of_the_two_logits():
    image = png_bytes(smooth_images(1)[0])
    pairs = [Pair("p", image, image, "0"), Pair("q", image, image, "1")]
    probs = pair_probs(_FixedLogits([2.0, 0.0, 0.0, 0.0]), pairs, batch_size=4)
    e = torch.e ** 2
    assert probs[0] == pytest.approx((e / (e + 1), 1 / (e + 1))) and probs[1] == pytest.approx((0.5, 0.5))


def _pick_a_pic_parquet(path, labels):
    images = smooth_images(2 * len(labels), 32, 32, seed=7)
    table = pa.table({
        "caption": [f"a red circle {i}" for i in range(len(labels))],
        "jpg_0": [png_bytes(images[2 * i]) for i in range(len(labels))],
        "jpg_1": [png_bytes(images[2 * i + 1]) for i in range(len(labels))],
        "label_0": labels, "label_1": [None if label is None else 1 - label for label in labels],
        "has_label": [label is not None for label in labels],
    })
    pq.write_table(table, path)
    return path


def test_read_pairs_skips_unlabelled_rows(tmp_path):
    from diffalign.data.sources import iter_rows

    path = _pick_a_pic_parquet(tmp_path / "t.parquet", [1.0, None, 0.5, 0.0])
    pairs = read_pairs(iter_rows([str(path)]))
    assert [p.label for p in pairs] == ["0", "tie", "1"]


def test_evaluate_with_a_fixed_threshold(tiny_rewards, tmp_path):
    from diffalign.data.sources import iter_rows

    pairs = read_pairs(iter_rows([str(_pick_a_pic_parquet(tmp_path / "t.parquet", [1.0, 0.5, 0.0, 0.5, 1.0]))]))
    report = evaluate(tiny_rewards["pickscore"], pairs, threshold=1.0)  # every prediction a tie
    assert report.test_accuracy == pytest.approx((0.5 + 1 + 0.5 + 1 + 0.5) / 5)
    assert (report.test_pairs, report.test_ties, report.threshold) == (5, 2, 1.0)
    with pytest.raises(ValueError, match="validation"):
        evaluate(tiny_rewards["pickscore"], pairs)


def test_the_script_entry_point(tiny_clip_dir, tmp_path, capsys):
    validation = _pick_a_pic_parquet(tmp_path / "validation.parquet", [1.0, 0.0, 0.5, 1.0, 0.0, 1.0])
    test = _pick_a_pic_parquet(tmp_path / "test.parquet", [0.0, 0.5, 1.0, 1.0])
    out = tmp_path / "report.json"
    code = main(["--reward", "pickscore", "--model", str(tiny_clip_dir), "--validation", str(validation),
                 "--test", str(test), "--out", str(out), "--no-progress", "--batch-size", "4"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["reward"] == "pickscore" and report["test_pairs"] == 4 and report["test_ties"] == 1
    assert report["validation_pairs"] == 6 and len(report["validation_accuracy"]) == 11
    assert report["threshold"] == THRESHOLDS[report["validation_accuracy"].index(max(report["validation_accuracy"]))]
    assert 0.0 <= report["test_accuracy"] <= 1.0
    assert json.loads(capsys.readouterr().out) == report
