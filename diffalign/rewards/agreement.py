"""How often a reward model agrees with held-out human pairs: the Pick-a-Pic protocol
(Kirstain et al., 2023; yuvalkirstain/PickScore ``trainer/scripts/eval_preference_predictor.py``).

For each pair ``(prompt, image_0, image_1, label_0)``:

- human label: ``tie`` when ``label_0 == 0.5``, ``"0"`` when ``label_0 == 1``, else ``"1"``;
- the model's probabilities ``(p0, p1)`` = softmax of its two preference logits
  (:meth:`RewardModel.preference_logits`); prediction ``tie`` when ``|p0 − p1| ≤ threshold``,
  else the likelier image;
- credit 1 for an exact match, 0.5 when either side is a tie, else 0; accuracy = mean credit.

The threshold is chosen on ``validation_unique`` from 0, 0.1, …, 1 (the first best) and the
accuracy reported on ``test_unique`` (500 pairs each, one per prompt). ``chance`` is the
official script's accuracy of a random predictor at that threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch

from diffalign.arguments import COUNT, SCALE

THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(11))
TIE = "tie"


@dataclass
class Pair:
    """One human comparison: ``label`` is ``"0"``, ``"1"`` or ``"tie"``."""

    prompt: str
    image_0: bytes
    image_1: bytes
    label: str


def human_label(label_0: float) -> str:
    """``"tie"`` for 0.5, ``"0"`` when image 0 was preferred (1.0), else ``"1"``."""
    if label_0 == 0.5:
        return TIE
    return "0" if label_0 == 1 else "1"


def predicted_label(p0: float, p1: float, threshold: float) -> str:
    """``"tie"`` when the probabilities are within ``threshold``, else the likelier image."""
    if abs(p1 - p0) <= threshold:
        return TIE
    return "0" if p0 > p1 else "1"


def credit(label: str, prediction: str) -> float:
    """1 for agreement, 0.5 when either side is a tie, else 0."""
    if label == prediction:
        return 1.0
    return 0.5 if TIE in (label, prediction) else 0.0


def accuracy(probs: Sequence[tuple[float, float]], labels: Sequence[str], threshold: float) -> float:
    """Mean credit of the predictions at ``threshold``."""
    if not labels:
        raise ValueError("no pairs to measure accuracy on")
    return sum(credit(label, predicted_label(p0, p1, threshold)) for (p0, p1), label in zip(probs, labels)) / len(labels)


def choose_threshold(probs: Sequence[tuple[float, float]], labels: Sequence[str],
                     thresholds: Sequence[float] = THRESHOLDS) -> tuple[float, list[float]]:
    """``(threshold, accuracy at each threshold)``: the first threshold with the best accuracy."""
    scores = [accuracy(probs, labels, t) for t in thresholds]
    return thresholds[scores.index(max(scores))], scores


def chance_accuracy(labels: Sequence[str], threshold: float) -> float:
    """The official script's accuracy of a random predictor at ``threshold``."""
    ties = sum(label == TIE for label in labels) / len(labels)
    return (threshold + (1 - threshold) / 2) * ties + (1 - ties) * 0.5


def pair_probs(reward, pairs: Sequence[Pair], batch_size: int = 16, progress: bool = False) -> list[tuple[float, float]]:
    """``(p0, p1)`` of each pair: the softmax of the reward's two preference logits."""
    from tqdm.auto import tqdm

    from diffalign.data.images import decode

    out = []
    per_call = max(1, batch_size // 2)
    for start in tqdm(range(0, len(pairs), per_call), disable=not progress, desc="pairs", unit="batch"):
        chunk = pairs[start : start + per_call]
        images = [decode(data) for pair in chunk for data in (pair.image_0, pair.image_1)]
        prompts = [pair.prompt for pair in chunk for _ in range(2)]
        probs = torch.softmax(reward.preference_logits(images, prompts).view(-1, 2).double(), dim=-1)
        out += [(p0, p1) for p0, p1 in probs.tolist()]
    return out


def read_pairs(rows: Iterable[dict], limit: int | None = None) -> list[Pair]:
    """Pairs from Pick-a-Pic rows (``caption``, ``jpg_0``, ``jpg_1``, ``label_0``); rows without a
    label are skipped."""
    from diffalign.data.images import image_bytes

    pairs = []
    for row in rows:
        if row.get("label_0") is None or row.get("has_label") is False:
            continue
        pairs.append(Pair(row["caption"], image_bytes(row["jpg_0"]), image_bytes(row["jpg_1"]), human_label(row["label_0"])))
        if limit is not None and len(pairs) >= limit:
            break
    return pairs


@dataclass
class AgreementReport:
    """What :func:`evaluate` measured (``validation_accuracy`` per candidate threshold)."""

    reward: str
    threshold: float
    test_accuracy: float
    test_pairs: int
    test_ties: int
    chance: float
    thresholds: list[float] = field(default_factory=list)
    validation_accuracy: list[float] = field(default_factory=list)
    validation_pairs: int = 0


def evaluate(reward, test: Sequence[Pair], validation: Sequence[Pair] | None = None, threshold: float | None = None,
             thresholds: Sequence[float] = THRESHOLDS, batch_size: int = 16, progress: bool = False) -> AgreementReport:
    """Agreement on ``test``, at ``threshold`` or at the one chosen on ``validation``."""
    if threshold is None and not validation:
        raise ValueError("give validation pairs to choose the tie threshold on, or a threshold")
    report_kwargs = {}
    if threshold is None:
        val_probs = pair_probs(reward, validation, batch_size, progress)
        threshold, scores = choose_threshold(val_probs, [p.label for p in validation], thresholds)
        report_kwargs = dict(thresholds=list(thresholds), validation_accuracy=scores, validation_pairs=len(validation))
    labels = [p.label for p in test]
    test_acc = accuracy(pair_probs(reward, test, batch_size, progress), labels, threshold)
    return AgreementReport(reward.label, threshold, test_acc, len(test), labels.count(TIE),
                           chance_accuracy(labels, threshold), **report_kwargs)


# ----------------------------------------------------------------------------- script
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from diffalign.data.sources import KINDS
    from diffalign.rewards.cli import add_reward_arguments

    add_reward_arguments(parser, several=False)
    parser.add_argument("--test", nargs="+", required=True,
                        help="test pairs: Parquet files/folders/globs, WebDataset tars, or a hub id (Pick-a-Pic columns)")
    parser.add_argument("--test-split", default="test_unique", help="split of a hub --test (default: test_unique)")
    parser.add_argument("--validation", nargs="+", default=None, help="pairs to choose the tie threshold on (same forms)")
    parser.add_argument("--validation-split", default="validation_unique",
                        help="split of a hub --validation (default: validation_unique)")
    parser.add_argument("--threshold", type=SCALE, default=None, help="use this tie threshold instead of choosing one")
    parser.add_argument("--kind", choices=KINDS, default="auto", help="source kind (default: from the files)")
    parser.add_argument("--limit", type=COUNT, default=None, help="at most this many pairs per split")
    parser.add_argument("--out", type=Path, default=None, help="also write the report as JSON here")


def run(args: argparse.Namespace) -> int:
    from diffalign.data.sources import SourceError, iter_rows
    from diffalign.rewards import RewardLoadError
    from diffalign.rewards.cli import ScoreInputError, load_rewards_from_args

    columns = ["caption", "jpg_0", "jpg_1", "label_0", "has_label"]
    try:
        reward = load_rewards_from_args(args)[0]
        test = read_pairs(iter_rows(args.test, args.kind, split=args.test_split, columns=columns), args.limit)
        validation = None
        if args.validation:
            rows = iter_rows(args.validation, args.kind, split=args.validation_split, columns=columns)
            validation = read_pairs(rows, args.limit)
        report = evaluate(reward, test, validation, args.threshold, batch_size=args.batch_size, progress=not args.no_progress)
    except (SourceError, RewardLoadError, ScoreInputError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    text = json.dumps(asdict(report), indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
