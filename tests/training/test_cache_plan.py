"""``data.cache: auto``, the default: the first run on a dataset builds the latent cache and trains
from it, the next run reuses it; runs a cache cannot serve train uncached and say why."""

import json
from pathlib import Path

import pytest

from diffalign.cli import main
from diffalign.data import cache as cache_module

from conftest import write_groups

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"
RES = 32


def _train(tiny_path, data, out, *overrides, objective="diffusion_dpo", kind="sdxl"):
    args = ["train", "--config", str(CONFIGS / "tiny" / f"{objective}.yaml"), f"model.path={tiny_path(kind)}",
            f"data.path={data}", f"output_dir={out}", f"data.resolution={RES}", "max_steps=2", *overrides]
    return main(args)


def _losses(out):
    return [json.loads(line)["train/loss"] for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _metrics(out) -> dict[str, list[float]]:
    """Each logged value of a run, by name, one per logged update."""
    lines = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return {key: [line[key] for line in lines] for key in lines[0]}


@pytest.fixture
def encoded_shards(monkeypatch):
    """Count the cache shards encoded (the VAE and text-encoder work)."""
    calls = []
    original = cache_module._encode_shard

    def counting(family, groups, rows, *args):
        calls.append(rows)
        return original(family, groups, rows, *args)

    monkeypatch.setattr(cache_module, "_encode_shard", counting)
    return calls


def test_the_first_run_builds_the_cache_and_the_next_reuses_it(tiny_path, tmp_path, capsys, encoded_shards):
    data = write_groups(tmp_path / "prefs", k=2, captions=False)
    folder = data / "cache" / f"sdxl-{RES}"
    assert _train(tiny_path, data, tmp_path / "first") == 0
    assert "latent cache: building" in capsys.readouterr().out
    assert json.loads((folder / "cache.json").read_text())["complete"] is True
    built = len(encoded_shards)
    assert built == 1  # 4 rows, one shard

    assert _train(tiny_path, data, tmp_path / "second") == 0
    assert f"latent cache: reading {folder}" in capsys.readouterr().out
    assert len(encoded_shards) == built  # nothing encoded again
    # Both runs trained from the same cache with the same seed: the same losses.
    assert _losses(tmp_path / "first") == _losses(tmp_path / "second")
    # And the cache changes the cost, not the maths: an uncached run agrees (the first step to
    # rounding; the updates amplify the rounding of the VAE's batch to about 1e-5 by step 2).
    assert _train(tiny_path, data, tmp_path / "uncached", "data.cache=false") == 0
    uncached, cached = _losses(tmp_path / "uncached"), _losses(tmp_path / "first")
    assert uncached[0] == pytest.approx(cached[0], rel=1e-6)
    assert uncached == pytest.approx(cached, rel=1e-4)


def test_prompt_dropout_trains_from_the_cache_as_without_it(tiny_path, tmp_path, capsys):
    """A cached run embeds the empty prompt once at start and drops the same groups' prompts as an
    uncached run (each group's draw from its own seed): the same losses, and not those of a run
    that keeps every prompt."""
    data = write_groups(tmp_path / "prefs", k=2, captions=False)
    assert _train(tiny_path, data, tmp_path / "cached", "prompt_dropout=0.5") == 0
    assert "latent cache: building" in capsys.readouterr().out
    assert _train(tiny_path, data, tmp_path / "uncached", "prompt_dropout=0.5", "data.cache=false") == 0
    assert _train(tiny_path, data, tmp_path / "kept", "data.cache=false") == 0
    cached, uncached = _losses(tmp_path / "cached"), _losses(tmp_path / "uncached")
    assert uncached == pytest.approx(cached, rel=1e-4)
    assert _losses(tmp_path / "kept") != pytest.approx(uncached, rel=1e-4)


def test_an_unfinished_cache_is_continued_not_restarted(tiny_path, tmp_path, capsys, encoded_shards):
    data = write_groups(tmp_path / "prefs", k=2, rows=4, captions=False)
    from diffalign.families import load

    family = load(str(tiny_path("sdxl")))
    folder = cache_module.build_cache(data, family, resolution=RES, shard_size=2, progress=False)
    meta = json.loads((folder / "cache.json").read_text())
    (folder / "shard-00001.safetensors").unlink()  # as if the build was killed after its first shard
    (folder / "cache.json").write_text(json.dumps({**meta, "complete": False}))
    encoded_shards.clear()
    assert _train(tiny_path, data, tmp_path / "run") == 0
    assert [list(rows) for rows in encoded_shards] == [[2, 3]]  # only the missing shard
    assert json.loads((folder / "cache.json").read_text())["complete"] is True


def test_a_captioned_dataset_trains_from_one_cache_for_the_prompt_and_for_the_captions(tiny_path, tmp_path, capsys,
                                                                                         encoded_shards):
    """The cache of a captioned dataset holds the prompts' and the captions' embeddings: Diffusion-DPO
    (conditioned on the prompt) builds it and DCPO (on the captions) reuses it, each with the errors
    and losses of its uncached run, which encodes its texts at every step."""
    data = write_groups(tmp_path / "prefs", k=2)  # captions "a red cat {i}, version {j}", prompts "a red cat {i}"
    runs = {}
    for objective, action in (("diffusion_dpo", "building"), ("dcpo", f"reading {data / 'cache' / 'sd-32'}")):
        assert _train(tiny_path, data, tmp_path / objective, objective=objective, kind="sd15") == 0
        assert f"latent cache: {action}" in capsys.readouterr().out
        assert _train(tiny_path, data, tmp_path / f"{objective}-uncached", "data.cache=false", objective=objective,
                      kind="sd15") == 0
        runs[objective] = _metrics(tmp_path / objective), _metrics(tmp_path / f"{objective}-uncached")
    assert len(encoded_shards) == 1  # 4 rows, one shard: built once, for both objectives
    for objective, (cached, uncached) in runs.items():
        for key in ("train/err_w", "train/err_l", "train/loss"):
            assert len(cached[key]) == 2, (objective, key)
            assert uncached[key][0] == pytest.approx(cached[key][0], rel=1e-6), (objective, key)
            assert uncached[key] == pytest.approx(cached[key], rel=1e-4), (objective, key)
    # The texts matter: a cache that served one objective the other's texts would show (the first
    # loss is ln 2 for both, the policy starting at the reference; the second differs by about 4 %).
    assert runs["diffusion_dpo"][1]["train/loss"] != pytest.approx(runs["dcpo"][1]["train/loss"], rel=1e-2)


def test_a_cache_of_an_older_layout_is_refused_naming_the_rebuild(tiny_path, tmp_path, capsys):
    """A version-1 cache (before the prompts' embeddings were stored beside the captions') is never
    read, finished or not: the run stops before any model loads, naming the folder and the command."""
    from diffalign.families import load

    data = write_groups(tmp_path / "prefs", k=2)
    folder = cache_module.build_cache(data, load(str(tiny_path("sd15"))), resolution=RES, progress=False)
    meta = json.loads((folder / "cache.json").read_text())
    for complete in (True, False):  # a finished cache is read; an unfinished one would be continued
        (folder / "cache.json").write_text(json.dumps({**meta, "version": 1, "complete": complete}))
        assert _train(tiny_path, data, tmp_path / f"run-{complete}", kind="sd15") == 1
        err = capsys.readouterr().err
        assert f"{folder} holds a latent cache of layout version 1, and this diffalign reads version 2" in err
        assert f"Delete {folder} and rebuild it with `diffalign cache {data} --model {tiny_path('sd15')} " \
               f"--resolution {RES}`, or train with data.cache=false" in err
        assert "Traceback" not in err and not (tmp_path / f"run-{complete}" / "metrics.jsonl").exists()


def test_runs_a_cache_cannot_serve_train_uncached_and_say_why(tiny_path, tmp_path, capsys):
    overrides, why = ["data.random_flip=true"], "centre-cropped, unflipped"
    data = write_groups(tmp_path / "prefs", k=2, captions=False)
    assert _train(tiny_path, data, tmp_path / "run", *overrides) == 0
    out = capsys.readouterr().out
    assert "latent cache: off" in out and why in out
    assert not (data / "cache").exists()  # no latent cache, and an uncached run makes no reference pass
    # Asked for explicitly, the same run is refused with the reason and the fix.
    assert _train(tiny_path, data, tmp_path / "again", "data.cache=true", *overrides) == 1
    err = capsys.readouterr().err
    assert why in err and "data.cache=false" in err


def test_a_cache_the_disk_cannot_hold_is_refused_before_anything_loads(tiny_path, tmp_path, capsys, monkeypatch):
    data = write_groups(tmp_path / "prefs", k=2, captions=False)
    # 4 pairs of 32-px images through the tiny VAE (4 latent channels, ×2 downsampling):
    # 8 images × mean and std × 4 bytes × 4 × 16 × 16 = 65,536 bytes.
    from diffalign.config import load_config

    config = load_config(CONFIGS / "tiny" / "diffusion_dpo.yaml", [f"model.path={tiny_path('sdxl')}", f"data.path={data}",
                                                                  f"data.resolution={RES}"])
    from diffalign import resources
    from diffalign.data.cache import cache_bytes

    assert cache_bytes(config.model.path, None, config.data.resolution, None, 8) == 65_536
    monkeypatch.setattr(resources, "free_disk", lambda folder: 65_535)
    assert _train(tiny_path, data, tmp_path / "run") == 1
    err = capsys.readouterr().err
    assert "at least 64.0 KiB" in err and "data.cache=false" in err
    assert not (data / "cache").exists()
