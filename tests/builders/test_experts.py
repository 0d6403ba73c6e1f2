"""Datasets of one image per prompt (K = 1): written, read and loaded like any other; the experts
builder both ways, on a hand-made source whose expected rows are written out below; resumption;
and the pair builders' refusal of K = 1."""

import json
import signal

import pytest
from pickapic_source import jpeg

from diffalign.builders.dual_captions import build_dual_captions
from diffalign.builders.experts import build_experts, rank_candidates
from diffalign.builders.filtering import filter_pairs
from diffalign.builders.ranked_pairs import ranked_to_pairs
from diffalign.cli import main
from diffalign.data import GroupDataset, PreferenceDataset, collate_groups
from diffalign.data.writer import BuildError, ShardWriter
from diffalign.testing import write_handmade_dataset

A, B, C, D, E, F, G, H = (jpeg(c) for c in [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0), (0, 250, 250),
                                              (250, 0, 250), (120, 120, 120), (30, 30, 30)])
BROKEN = b"not an image"


def _img(data):
    return {"bytes": data, "path": None}


@pytest.fixture
def source(tmp_path):
    """Five rows, best first. What each way must do with them:

    =====  ============  ======================  ===========  =========================================
    row    prompt        images (scores)         ranks        by first
    =====  ============  ======================  ===========  =========================================
    r0     a red cat     A (2.0), B (1.0)        [0, 1]       A kept
    r1     a blue dog    C (5.0), D (5.0)        [0, 0]       a tie: skipped
    r2     a red cat     A (2.0), E (0.5)        [0, 1]       A for "a red cat" again: duplicate
    r3     a green bird  BROKEN (9.0), F (3.0)   [0, 1]       unreadable
    r4     a sun         G, H (no scores)        [0, 1]       G kept (read from a path in the folder)
    =====  ============  ======================  ===========  =========================================

    By scores, best first: r3-0 9.0 (unreadable), r1-0 5.0, r1-1 5.0, r3-1 3.0, r0-0 2.0,
    r2-0 2.0 (duplicate of r0-0), r0-1 1.0, r2-1 0.5; r4 has no scores.
    """
    root = tmp_path / "source"
    (root / "images").mkdir(parents=True)
    (root / "images" / "g.jpg").write_bytes(G)
    rows = [
        {"id": "r0", "prompt": "a red cat", "images": [_img(A), _img(B)], "scores": [2.0, 1.0], "ranks": [0, 1],
         "meta": json.dumps({"user": 7})},
        {"id": "r1", "prompt": "a blue dog", "images": [_img(C), _img(D)], "scores": [5.0, 5.0], "ranks": [0, 0]},
        {"id": "r2", "prompt": "a red cat", "images": [_img(A), _img(E)], "scores": [2.0, 0.5], "ranks": [0, 1]},
        {"id": "r3", "prompt": "a green bird", "images": [_img(BROKEN), _img(F)], "scores": [9.0, 3.0],
         "ranks": [0, 1]},
        {"id": "r4", "prompt": "a sun", "images": [{"bytes": None, "path": "images/g.jpg"}, _img(H)], "ranks": [0, 1]},
    ]
    return write_handmade_dataset(root, [{"source": "pick-a-pic", **row} for row in rows])


def _rows(folder):
    return list(PreferenceDataset.open(folder))


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def test_a_k1_dataset_is_written_read_and_loaded(tmp_path):
    writer = ShardWriter(tmp_path / "k1", builder="test", options={}, shard_size=2)
    for i, colour in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200)]):
        writer.add({"id": f"e{i}", "prompt": f"prompt {i}", "images": [_img(jpeg(colour, (12, 8)))], "scores": [float(i)],
                    "ranks": None, "captions": [f"caption {i}"], "source": "test", "meta": None})
        writer.advance(i + 1)
    writer.finish({"group_size": 1})
    data = PreferenceDataset.open(tmp_path / "k1")
    assert len(data) == 3 and data.group_size == 1 and len(data.shards) == 2
    assert [r["id"] for r in data] == ["e0", "e1", "e2"] and data[2]["captions"] == ["caption 2"]
    card = (tmp_path / "k1" / "README.md").read_text()
    assert "Rows are expert images, one per row with its prompt (K = 1)." in card
    assert "- images per row (K): 1" in card

    groups = GroupDataset(data, resolution=8)
    batch = collate_groups([groups[i] for i in range(3)])
    assert batch["pixels"].shape == (3, 1, 3, 8, 8) and batch["scores"].tolist() == [[0.0], [1.0], [2.0]]
    assert batch["original_size"].tolist() == [[[8, 12]]] * 3 and batch["ids"] == ["e0", "e1", "e2"]
    red = batch["pixels"][0, 0, :, 4, 4]
    assert red[0] > 0.5 and red[1] < -0.5 and red[2] < -0.5  # image e0 is the red one


def test_by_first_keeps_each_rows_best_image(source, tmp_path):
    out = tmp_path / "first"
    manifest = build_experts(source, out, progress=False)
    rows = _rows(out)
    assert [(r["id"], r["prompt"]) for r in rows] == [("r0-0", "a red cat"), ("r4-0", "a sun")]
    assert [r["images"][0]["bytes"] for r in rows] == [A, G]  # r4's image was a path: now its bytes
    assert all(r["images"][0]["path"] is None for r in rows)
    assert rows[0]["scores"] == [2.0] and rows[1]["scores"] is None
    assert rows[0]["ranks"] is None and rows[0]["captions"] is None and rows[0]["source"] == "pick-a-pic"
    meta = json.loads(rows[0]["meta"])
    assert meta["expert"]["row"] == "r0" and meta["expert"]["image"] == 0 and meta["expert"]["score"] == 2.0
    assert meta["source_meta"] == {"user": 7}
    assert manifest["group_size"] == 1 and manifest["rows"] == 2
    assert manifest["counts"]["dropped"] == {"tie": 1, "duplicate": 1, "unreadable_image": 1}
    assert manifest["experts"]["mean_score"] == 2.0
    assert PreferenceDataset.open(out).group_size == 1


def test_by_first_top_stops_after_n(source, tmp_path):
    manifest = build_experts(source, tmp_path / "one", top=1, progress=False)
    assert [r["id"] for r in _rows(tmp_path / "one")] == ["r0-0"]
    assert manifest["counts"]["dropped"] == {"beyond_top": 4} and manifest["experts"]["stopped_at_top"]


def test_by_scores_ranks_every_image(source, tmp_path):
    manifest = build_experts(source, tmp_path / "all", by="scores", progress=False)
    rows = _rows(tmp_path / "all")
    assert [r["id"] for r in rows] == ["r1-0", "r1-1", "r3-1", "r0-0", "r0-1", "r2-1"]
    assert [r["scores"] for r in rows] == [[5.0], [5.0], [3.0], [2.0], [1.0], [0.5]]
    assert [r["images"][0]["bytes"] for r in rows] == [C, D, F, A, B, E]
    assert [r["prompt"] for r in rows] == ["a blue dog", "a blue dog", "a green bird", "a red cat", "a red cat",
                                           "a red cat"]  # several experts of one prompt, as in Diffusion-DRO
    assert manifest["counts"]["dropped"] == {"no_scores": 1, "unreadable_image": 1, "duplicate": 1}
    assert manifest["experts"]["candidates"] == 8 and manifest["experts"]["kept"] == 6


def test_by_scores_top_n(source, tmp_path):
    manifest = build_experts(source, tmp_path / "top3", by="scores", top=3, progress=False)
    assert [r["id"] for r in _rows(tmp_path / "top3")] == ["r1-0", "r1-1", "r3-1"]
    assert manifest["counts"]["read"] == 4  # r3-0 (unreadable), r1-0, r1-1, r3-1
    assert manifest["counts"]["dropped"] == {"no_scores": 1, "unreadable_image": 1, "beyond_top": 4}
    assert manifest["experts"]["mean_score"] == pytest.approx(13 / 3) and manifest["experts"]["min_score"] == 3.0


def test_rank_candidates():
    ranked, unscored, non_finite = rank_candidates([[1.0, 3.0], None, [3.0, float("nan")], []])
    assert ranked == [(0, 1, 3.0), (2, 0, 3.0), (0, 0, 1.0)] and unscored == 2 and non_finite == 1


def test_refusals(source, tmp_path):
    unscored = write_handmade_dataset(tmp_path / "unscored", [{"id": "x", "prompt": "p", "images": [_img(A), _img(B)]}])
    with pytest.raises(BuildError, match="no image has a score.*diffalign score"):
        build_experts(unscored, tmp_path / "o1", by="scores")
    assert not (tmp_path / "o1").exists()
    with pytest.raises(BuildError, match="--top must be 1 or more"):
        build_experts(source, tmp_path / "o2", top=0)
    with pytest.raises(BuildError, match="unknown --by 'best'"):
        build_experts(source, tmp_path / "o3", by="best")
    build_experts(source, tmp_path / "o4", progress=False)
    with pytest.raises(BuildError, match="other options"):
        build_experts(source, tmp_path / "o4", by="scores", progress=False)


def test_pair_builders_refuse_a_k1_dataset(source, tmp_path):
    build_experts(source, tmp_path / "experts", by="scores", progress=False)
    with pytest.raises(BuildError, match=r"one image per prompt \(K = 1, an expert dataset\).*needs K ≥ 2"):
        filter_pairs(tmp_path / "experts", tmp_path / "filtered")
    assert not (tmp_path / "filtered").exists()
    with pytest.raises(BuildError, match=r"one image per prompt \(K = 1\): no pairs can be made"):
        ranked_to_pairs(tmp_path / "experts", tmp_path / "pairs")
    with pytest.raises(BuildError, match=r"K = 1.*the perturbation strategy rewrites .*use --strategy captioning"):
        build_dual_captions(tmp_path / "experts", tmp_path / "captioned", strategy="perturbation",
                            text_model="never-loaded")


def test_command_line_and_help(source, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["build", "experts", "--help"])
    assert exited.value.code == 0
    usage = capsys.readouterr().out
    assert "--from DATASET" in usage and "{first,scores}" in usage and "--top N" in usage
    assert main(["build", "experts", "--from", str(source), "--out", str(tmp_path / "cli"), "--by", "scores",
                 "--top", "2", "--no-progress"]) == 0
    assert "wrote 2 expert images (one per row)" in capsys.readouterr().out
    assert [r["id"] for r in _rows(tmp_path / "cli")] == ["r1-0", "r1-1"]
    assert main(["build", "experts", "--from", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 1
    assert capsys.readouterr().err.startswith("error: ")


def test_a_stop_signal_keeps_whole_shards_and_the_build_continues(source, tmp_path, monkeypatch, capsys):
    """SIGTERM while r0-0 is kept (the 4th expert, shard size 2): shards [r1-0, r1-1] and [r3-1, r0-0]
    are kept. The resumed build must still know that r0-0's image is taken, so r2-0 stays a duplicate."""
    from diffalign.builders import experts

    original = experts._expert_row

    def signalled(row, image_index, stored, digest):
        if (row["id"], image_index) == ("r0", 0):
            signal.raise_signal(signal.SIGTERM)
        return original(row, image_index, stored, digest)

    out = tmp_path / "out"
    command = ["build", "experts", "--from", str(source), "--out", str(out), "--by", "scores", "--shard-size", "2",
               "--no-progress"]
    monkeypatch.setattr(experts, "_expert_row", signalled)
    assert main(command) == 143
    assert "stopped by SIGTERM: 4 rows in 2 shards" in capsys.readouterr().err
    progress = json.loads((out / ".progress.json").read_text())
    assert progress["position"] == 5 and [s["rows"] for s in progress["shards"]] == [2, 2]
    monkeypatch.setattr(experts, "_expert_row", original)
    assert main(command) == 0
    build_experts(source, tmp_path / "straight", by="scores", shard_size=2, progress=False)
    assert _rows(out) == _rows(tmp_path / "straight")
    assert [r["id"] for r in _rows(out)] == ["r1-0", "r1-1", "r3-1", "r0-0", "r0-1", "r2-1"]
    assert _manifest(out)["counts"] == _manifest(tmp_path / "straight")["counts"]
    assert _manifest(out)["counts"]["dropped"] == {"no_scores": 1, "unreadable_image": 1, "duplicate": 1}


def test_the_latent_cache_serves_a_k1_dataset(source, tmp_path, tiny_path):
    import torch

    from diffalign.data.cache import LatentCache, build_cache
    from diffalign.data.schema import image_texts
    from diffalign.families import load

    build_experts(source, tmp_path / "experts", by="scores", top=3, progress=False)
    path = tiny_path("sd15")
    full = load(path)
    build_cache(tmp_path / "experts", full, resolution=32, batch_size=2, shard_size=2, progress=False)
    bare = load(path, load_vae=False, load_text_encoders=False)
    cache = LatentCache.open(tmp_path / "experts", bare, 32)
    cached = collate_groups([GroupDataset(tmp_path / "experts", resolution=32, cache=cache)[i] for i in range(3)])
    uncached = collate_groups([GroupDataset(tmp_path / "experts", resolution=32)[i] for i in range(3)])
    assert cached["latent_mean"].shape[:2] == (3, 1) and cached["prompt_embeds"].ndim == 3  # one per row

    def latents(family, batch):
        texts = [image_texts(p, c, 1, c is not None) for p, c in zip(batch["prompts"], batch["captions"])]
        return family.inputs(batch, texts, generator=torch.Generator().manual_seed(3))[0]

    torch.testing.assert_close(latents(bare, cached), latents(full, uncached), rtol=1e-5, atol=1e-5)
