"""Noisy-pair filtering: exact fraction kept, each term ranks what it should, the report says why."""

import io
import json

import pytest
import torch
from PIL import Image

from diffalign.builders.filtering import (
    filter_pairs, hashing_embeddings, knn_entropy_terms, model_embeddings, prompt_quality, score_rows,
)
from diffalign.cli import main
from diffalign.data import PreferenceDataset
from diffalign.data.writer import BuildError, ShardWriter
from diffalign.rewards.tiny import tiny_reward


def _png(color) -> bytes:  # lossless, unlike pickapic_source.jpeg
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buffer, "PNG")
    return buffer.getvalue()


def write_pairs(folder, prompts, scores):
    """A pair dataset with the given prompts and ``[best, worst]`` scores."""
    writer = ShardWriter(folder, builder="test", options={}, shard_size=4)
    for i, (prompt, pair) in enumerate(zip(prompts, scores)):
        writer.add({"id": f"p{i}", "prompt": prompt, "source": "test", "meta": None, "captions": None,
                    "images": [{"bytes": _png((20 * i, 200, 0)), "path": None}, {"bytes": _png((0, 20 * i, 200)), "path": None}],
                    "scores": list(pair) if pair is not None else None, "ranks": [0, 1]})
        writer.advance(i + 1)
    writer.finish({"group_size": 2})
    return folder


PROMPTS = [f"a watercolor painting of animal number {w}" for w in
           ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")]
MARGINS = [0.5, 3.0, 0.01, 2.0, 1.0, 0.2, 4.0, 0.05, 1.5, 2.5]


def test_keeps_exactly_the_fraction_and_reports_why(tmp_path):
    data = write_pairs(tmp_path / "pairs", PROMPTS, [(10.0 + m, 10.0) for m in MARGINS])
    manifest = filter_pairs(data, tmp_path / "out", fraction=0.3, weights={"margin": 1, "quality": 0, "diversity": 0})
    kept = list(PreferenceDataset.open(tmp_path / "out"))
    # The three widest margins (4.0, 3.0, 2.5: rows 6, 1, 9), in their original order.
    assert [r["id"] for r in kept] == ["p1", "p6", "p9"]
    assert manifest["rows"] == 3 and manifest["counts"]["dropped"] == {"below_cutoff": 7}
    report = [json.loads(line) for line in (tmp_path / "out" / "filter_report.jsonl").read_text().splitlines()]
    assert [r["id"] for r in report if r["kept"]] == ["p1", "p6", "p9"]
    assert [r["rank"] for r in report if r["kept"]] == [1, 0, 2]
    assert all(r["main_reason"] == "margin" for r in report)
    assert report[2]["margin"] == pytest.approx(0.01)
    assert manifest["filter"]["kept_rows"] == 3 and manifest["filter"]["input_rows"] == 10
    assert manifest["filter"]["mean_kept"]["margin"] == pytest.approx((4.0 + 3.0 + 2.5) / 3)
    for fraction, expected in ((0.25, 2), (0.5, 5), (1.0, 10)):  # round(fraction * 10)
        assert filter_pairs(data, tmp_path / f"f{fraction}", fraction=fraction)["rows"] == expected


def test_margin_ranks_a_clear_pair_above_a_near_tie():
    prompts = ["a red fox in the snow at dawn", "a red fox in the snow at dusk"]
    margins = torch.tensor([3.0, 0.001])  # a clear margin, a near-tie; prompts equally good and diverse
    result = score_rows(prompts, margins, embeddings=hashing_embeddings(prompts),
                        weights={"margin": 1.0, "quality": 1.0, "diversity": 1.0}, k=1)
    assert result["total"][0] > result["total"][1]
    assert result["z"]["quality"].abs().max() == 0 and result["z"]["diversity"].abs().max() == 0


def test_quality_and_diversity_terms():
    # 9 words (≥ 5), only letters, 8 distinct words
    assert prompt_quality("a watercolor painting of a fox in the snow") == pytest.approx(8 / 9)
    assert prompt_quality("red cat!") == pytest.approx(2 / 5 * 6 / 7)
    for bad in ("##$!!", "cat", "cat cat cat cat cat cat"):
        assert prompt_quality(bad) < 0.5, bad
    prompts = ["a red cat"] * 3 + ["a spaceship above a stormy ocean"]
    terms = knn_entropy_terms(hashing_embeddings(prompts), k=1)
    assert terms.argmax().item() == 3 and terms[0] == terms[1] == terms[2]
    # A point's term is log of the distance to its k-th neighbour.
    points = torch.tensor([[0.0], [1.0], [3.0]])
    torch.testing.assert_close(knn_entropy_terms(points, k=1, eps=0.0), torch.log(torch.tensor([1.0, 1.0, 2.0])))
    torch.testing.assert_close(knn_entropy_terms(points, k=2, eps=0.0), torch.log(torch.tensor([3.0, 2.0, 3.0])))


def test_rescored_margins_and_model_embeddings(tmp_path):
    from diffalign.testing import tiny_clip_text_encoder, tiny_clip_tokenizer

    data = write_pairs(tmp_path / "pairs", PROMPTS[:4], [None] * 4)
    with pytest.raises(BuildError, match="has no scores"):
        filter_pairs(data, tmp_path / "none")
    reward = tiny_reward("pickscore")
    text = tmp_path / "text"
    tiny_clip_text_encoder().save_pretrained(text)
    tiny_clip_tokenizer().save_pretrained(text)
    manifest = filter_pairs(data, tmp_path / "out", fraction=0.5, reward=reward, text_model=str(text),
                            weights={"margin": 1, "quality": 0, "diversity": 0})
    report = [json.loads(line) for line in (tmp_path / "out" / "filter_report.jsonl").read_text().splitlines()]
    rows = list(PreferenceDataset.open(data))
    for row, line in zip(rows, report):
        images = [Image.open(io.BytesIO(img["bytes"])).convert("RGB") for img in row["images"]]
        scores = reward.score(images, row["prompt"])
        assert line["margin"] == pytest.approx((scores[0] - scores[1]).item(), abs=1e-4)
    assert manifest["rows"] == 2
    embeddings = model_embeddings(PROMPTS[:4], str(text))
    assert embeddings.shape == (4, 32) and torch.allclose(embeddings.norm(dim=1), torch.ones(4))


def test_command_line(tmp_path, capsys):
    data = write_pairs(tmp_path / "pairs", PROMPTS, [(10.0 + m, 10.0) for m in MARGINS])
    assert main(["build", "filter", str(data), "--out", str(tmp_path / "out"), "--fraction", "0.4",
                 "--weight", "quality=0", "--k", "2"]) == 0
    assert "kept 4 of 10 rows" in capsys.readouterr().out
    assert main(["build", "filter", str(data), "--out", str(tmp_path / "bad"), "--weight", "noise=1"]) == 1
    assert "unknown filtering term" in capsys.readouterr().err
