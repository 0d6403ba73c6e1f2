"""The latent cache: the same denoising error as the uncached path, without VAE or text encoders."""

import json
import os

import pytest
from safetensors.torch import load_file
import torch
from pickapic_source import jpeg

from diffalign.data import GroupDataset, collate_groups
from diffalign.data.schema import image_texts
from diffalign.data.cache import CacheMismatchError, LatentCache, build_cache
from diffalign.data.writer import ShardWriter
from diffalign.families import load
from diffalign.testing import save_tiny_pipeline, write_random_pairs

RES = 32


@pytest.fixture
def prefs(tmp_path):
    """Six groups of non-square images, per-image captions on some, one unreadable image."""
    writer = ShardWriter(tmp_path / "prefs", builder="test", options={}, shard_size=4)
    for i in range(6):
        images = [jpeg((40 * i, 100, 30), (48, 32)), jpeg((200, 20 * i, 90), (48, 32))]
        if i == 4:
            images[1] = b"broken"
        captions = [f"a red cat {i}", f"a blurry cat {i}"] if i % 2 else None
        writer.add({"id": f"r{i}", "prompt": f"a red cat {i}", "images": [{"bytes": b, "path": None} for b in images],
                    "scores": None, "ranks": [0, 1], "captions": captions, "source": "test", "meta": None})
        writer.advance(i + 1)
    writer.finish({"group_size": 2})
    return tmp_path / "prefs"


@pytest.fixture
def captioned(tmp_path):
    """Three pairs, each image with its own caption (none equal to the prompt)."""
    writer = ShardWriter(tmp_path / "captioned", builder="test", options={}, shard_size=4)
    for i in range(3):
        images = [jpeg((40 * i, 100, 30), (32, 32)), jpeg((200, 20 * i, 90), (32, 32))]
        writer.add({"id": f"c{i}", "prompt": f"a cat {i}", "images": [{"bytes": b, "path": None} for b in images],
                    "scores": None, "ranks": [0, 1], "captions": [f"a sharp cat {i}", f"a blurry cat {i}"],
                    "source": "test", "meta": None})
        writer.advance(i + 1)
    writer.finish({"group_size": 2})
    return tmp_path / "captioned"


def _inputs(family, batch, generator=None):
    """A row's own captions when it has them, as the cache encodes them."""
    texts = [image_texts(p, c, 2, c is not None) for p, c in zip(batch["prompts"], batch["captions"])]
    return family.inputs(batch, texts, generator=generator)


def _error(family, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    latents, cond = _inputs(family, batch, generator=gen)
    noise, t = family.sample_noise_and_time(latents, generator=gen)
    with torch.no_grad():
        return family.denoising_error(family.denoiser, latents, cond, noise, t)


@pytest.mark.parametrize("kind", ["sdxl", "sd3"])
def test_cached_equals_uncached(kind, tiny_path, prefs):
    path = tiny_path(kind)
    full = load(path)
    build_cache(prefs, full, resolution=RES, batch_size=3, shard_size=4, progress=False)
    # Training loads neither the VAE nor the text encoders.
    bare = load(path, load_vae=False, load_text_encoders=False)
    assert bare.pipe.vae is None and bare.pipe.text_encoder is None
    cache = LatentCache.open(prefs, bare, RES)
    uncached = collate_groups([GroupDataset(prefs, resolution=RES)[i] for i in range(6)])
    cached = collate_groups([GroupDataset(prefs, resolution=RES, cache=cache)[i] for i in range(6)])
    assert uncached["skipped"] == cached["skipped"] == 1
    assert cached["ids"] == uncached["ids"] and "pixels" not in cached
    torch.testing.assert_close(cached["original_size"], uncached["original_size"])
    err_uncached = _error(full, uncached, seed=7)
    err_cached = _error(bare, cached, seed=7)
    assert err_cached.shape == (5, 2)
    torch.testing.assert_close(err_cached, err_uncached, rtol=1e-5, atol=1e-5)


def test_sdxl_time_ids_come_from_the_recorded_crop(tiny_path, prefs):
    family = load(tiny_path("sdxl"))
    batch = collate_groups([GroupDataset(prefs, resolution=RES)[0]])
    _, cond = _inputs(family, batch)
    # 48×32 (w×h) → 48×32 already has its short side at 32: centre crop left = 8.
    assert cond.time_ids[0, 0].tolist() == [32, 48, 0, 8, 32, 32]


def test_refuses_another_model_or_resolution(tiny_path, prefs, tmp_path):
    family = load(tiny_path("sd3"))
    build_cache(prefs, family, resolution=RES, shard_size=4, progress=False)
    other = load(save_tiny_pipeline("sd3", tmp_path / "other-sd3", seed=1))
    with pytest.raises(CacheMismatchError, match="VAE or text encoders differ"):
        LatentCache.open(prefs, other, RES)
    with pytest.raises(CacheMismatchError, match="no latent cache for sd3 at 64px"):
        LatentCache.open(prefs, family, 64)
    cache = LatentCache.open(prefs, family, RES)
    with pytest.raises(CacheMismatchError, match="training asks for 64px"):
        GroupDataset(prefs, resolution=64, cache=cache)
    with pytest.raises(ValueError, match="centre-cropped and unflipped"):
        GroupDataset(prefs, resolution=RES, random_flip=True, cache=cache)
    with pytest.raises(CacheMismatchError, match="built differently"):
        build_cache(prefs, other, resolution=RES, shard_size=4, progress=False)


def test_resume_recomputes_only_missing_shards(tiny_path, prefs):
    family = load(tiny_path("sd15"))
    folder = build_cache(prefs, family, resolution=RES, shard_size=4, progress=False)
    shards = sorted(folder.glob("shard-*.safetensors"))
    assert len(shards) == 2
    first = shards[0].read_bytes()
    os.utime(shards[1], (1, 1))
    shards[0].unlink()
    meta = json.loads((folder / "cache.json").read_text())
    (folder / "cache.json").write_text(json.dumps({**meta, "complete": False}))
    with pytest.raises(CacheMismatchError, match="unfinished"):
        LatentCache.open(prefs, family, RES)
    build_cache(prefs, family, resolution=RES, shard_size=4, progress=False)
    assert shards[0].read_bytes() == first
    assert shards[1].stat().st_mtime == 1  # untouched
    assert LatentCache.open(prefs, family, RES).get(0)["latent_mean"].shape == (2, 4, 16, 16)


def test_a_stop_signal_finishes_the_shard_and_the_build_continues(tiny_path, prefs, tmp_path, monkeypatch, capsys):
    import signal
    import shutil

    from diffalign.cli import main
    from diffalign.data import cache as cache_module

    straight = tmp_path / "straight"
    shutil.copytree(prefs, straight)
    original = cache_module._encode_shard
    calls = []

    def signalled(family, groups, rows, *args):
        calls.append(rows)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGTERM)  # during the first shard: it is still written
        return original(family, groups, rows, *args)

    monkeypatch.setattr(cache_module, "_encode_shard", signalled)
    command = ["cache", str(prefs), "--model", str(tiny_path("sd15")), "--resolution", str(RES), "--shard-size", "2",
               "--no-progress"]
    capsys.readouterr()
    assert main(command) == 143
    err = capsys.readouterr().err
    folder = prefs / "cache" / f"sd-{RES}"
    assert "stopped by SIGTERM: 1 of 3 cache shards are written" in err and "Traceback" not in err
    assert sorted(p.name for p in folder.glob("shard-*")) == ["shard-00000.safetensors"]
    assert main(command) == 0 and [list(r) for r in calls] == [[0, 1], [2, 3], [4, 5]]  # shard 0 not redone
    monkeypatch.setattr(cache_module, "_encode_shard", original)
    assert main([*command[:1], str(straight), *command[2:]]) == 0
    for shard in range(3):
        name = f"shard-{shard:05d}.safetensors"
        a, b = load_file(folder / name), load_file(straight / "cache" / f"sd-{RES}" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_resolution_the_vae_cannot_divide_is_refused(tiny_path, prefs):
    family = load(tiny_path("sd15"))  # the tiny VAE halves each side
    with pytest.raises(CacheMismatchError, match="--resolution 33 is not a multiple of 2"):
        build_cache(prefs, family, resolution=33, progress=False)


def test_a_cache_being_built_is_not_built_twice(tiny_path, prefs, tmp_path, capsys, monkeypatch):
    """Another command holding the cache's lock (as a live `diffalign cache` or a training run's
    data.cache: auto build does): both commands that would build it again refuse, before any model
    loads, and write nothing."""
    import diffalign.families
    from diffalign.cli import main
    from diffalign.data.cache import cache_dir
    from diffalign.outputs import FolderLock

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    folder = cache_dir(prefs, "sd", RES)
    config = os.path.join(os.path.dirname(__file__), "..", "..", "training", "configs", "tiny", "sft.yaml")
    with FolderLock(folder):  # the other command, alive
        monkeypatch.setattr(diffalign.families, "load", no_model)
        capsys.readouterr()
        assert main(["cache", str(prefs), "--model", str(tiny_path("sd15")), "--resolution", str(RES)]) == 1
        assert "is being built by another command (pid" in capsys.readouterr().err
        assert main(["train", "--config", config, f"model.path={tiny_path('sd15')}", f"data.path={prefs}",
                     f"output_dir={tmp_path / 'run'}", f"data.resolution={RES}", "max_steps=1"]) == 1
        err = capsys.readouterr().err
        assert "is being built by another command (pid" in err and "Traceback" not in err
        assert sorted(p.name for p in folder.iterdir()) == [".lock"]
    monkeypatch.undo()  # the lock is free again: the build runs
    assert main(["cache", str(prefs), "--model", str(tiny_path("sd15")), "--resolution", str(RES), "--no-progress"]) == 0


@pytest.mark.parametrize("objective", ["diffusion_dpo", "dcpo"])
def test_a_captioned_cache_conditions_on_what_the_objective_asks_for(objective, tiny_path, captioned):
    """One cache of a captioned dataset: an objective conditioned on the prompt gets the prompts'
    embeddings, DCPO the captions', each equal to what the uncached step encodes (SD3: pooled
    embeddings too), through the step's own choice of texts."""
    from diffalign.objectives import DCPO, DiffusionDPO
    from diffalign.steps import DenoisingStep

    path = tiny_path("sd3")
    full = load(path)
    build_cache(captioned, full, resolution=RES, batch_size=2, shard_size=2, progress=False)
    bare = load(path, load_vae=False, load_text_encoders=False)
    cache = LatentCache.open(captioned, bare, RES)
    cached = collate_groups([GroupDataset(captioned, resolution=RES, cache=cache)[i] for i in range(3)])
    uncached = collate_groups([GroupDataset(captioned, resolution=RES)[i] for i in range(3)])
    made = {"diffusion_dpo": DiffusionDPO, "dcpo": DCPO}[objective]()
    _, got = DenoisingStep(bare, made, None, 2).inputs(cached, torch.Generator().manual_seed(0))
    _, want = DenoisingStep(full, made, None, 2).inputs(uncached, torch.Generator().manual_seed(0))
    assert got.prompt_embeds.shape == want.prompt_embeds.shape == (3, 2, 77 + 256, 32)
    torch.testing.assert_close(got.prompt_embeds, want.prompt_embeds, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got.pooled, want.pooled, rtol=1e-6, atol=1e-6)
    # The texts are the objective's: the prompt (both images alike) or each image's own caption.
    texts = [[f"a cat {i}"] * 2 if objective == "diffusion_dpo" else [f"a sharp cat {i}", f"a blurry cat {i}"]
             for i in range(3)]
    torch.testing.assert_close(got.prompt_embeds, full.encode_prompts(texts).prompt_embeds, rtol=1e-6, atol=1e-6)


def test_a_captioned_shard_stores_each_prompt_once_beside_the_captions(tiny_path, captioned, prefs):
    """The prompts cost one embedding per distinct prompt of a shard, not one per image; a
    dataset without captions stores no caption index."""
    family = load(tiny_path("sd15"))
    folder = build_cache(captioned, family, resolution=RES, shard_size=2, progress=False)
    first = load_file(folder / "shard-00000.safetensors")  # rows c0, c1: 2 prompts + 4 captions
    assert first["text_embeds"].shape[0] == 6
    assert first["prompt_index"].tolist() == [0, 3] and first["caption_index"].tolist() == [[1, 2], [4, 5]]
    assert load_file(folder / "shard-00001.safetensors")["text_embeds"].shape[0] == 3  # row c2 alone
    assert json.loads((folder / "cache.json").read_text())["captions"] is True
    plain = write_random_pairs(prefs.parent / "plain", pairs=3, resolution=RES)  # no captions
    folder = build_cache(plain, family, resolution=RES, shard_size=3, progress=False)
    shard = load_file(folder / "shard-00000.safetensors")
    assert "caption_index" not in shard and shard["prompt_index"].shape == (3,)
    assert json.loads((folder / "cache.json").read_text())["captions"] is False
    cache = LatentCache.open(plain, family, RES)
    item = cache.get(0)
    assert item["prompt_embeds"].ndim == 2 and "caption_embeds" not in item  # [L, D]: one per row
    # A text the cache holds no embedding of is refused, not replaced by the prompt's.
    batch = collate_groups([GroupDataset(plain, resolution=RES, cache=cache)[0]])
    with pytest.raises(ValueError, match="holds the embeddings of its prompt and captions only"):
        family.inputs(batch, [["a sharp cat", "a blurry cat"]])


def test_a_cache_of_an_older_layout_is_neither_read_nor_continued(tiny_path, prefs):
    """A version-1 cache (a captioned dataset's held only the captions' embeddings) is refused by
    the reader and by a build, with the folder to delete and the command that rebuilds it."""
    path = tiny_path("sd15")
    family = load(path)
    folder = build_cache(prefs, family, resolution=RES, shard_size=4, progress=False)
    meta = json.loads((folder / "cache.json").read_text())
    (folder / "cache.json").write_text(json.dumps({**meta, "version": 1}))
    expected = (f"{folder} holds a latent cache of layout version 1, and this diffalign reads version 2 (which also "
                f"stores each row's prompt embedding beside its captions'). Delete {folder} and rebuild it with "
                f"`diffalign cache {prefs} --model {path} --resolution {RES}`, or train with data.cache=false.")
    with pytest.raises(CacheMismatchError) as read:
        LatentCache.open(prefs, family, RES)
    assert str(read.value) == expected
    with pytest.raises(CacheMismatchError) as built:
        build_cache(prefs, family, resolution=RES, shard_size=4, progress=False)
    assert str(built.value) == expected


def test_zero_padded_text_states_are_stored_up_to_the_longest_prompt_and_read_back_whole(tiny_path, tmp_path):
    """Qwen-Image's prompt states are zero after each prompt (padded to 512 tokens so prompts
    batch): a shard keeps the token positions up to its longest prompt's last, and the reader
    gives back all 512, equal to the family's own encoding. CLIP's padding states are not zero:
    an SD1.5 shard keeps every position."""
    prompts = ["a cat", "a red cat on a mat in the sun, with a small hat and a blue ball", "a dog"]
    writer = ShardWriter(tmp_path / "prefs", builder="test", options={}, shard_size=4)
    for i, prompt in enumerate(prompts):
        images = [jpeg((40 * i, 100, 30), (32, 32)), jpeg((200, 20 * i, 90), (32, 32))]
        writer.add({"id": f"p{i}", "prompt": prompt, "images": [{"bytes": b, "path": None} for b in images],
                    "scores": None, "ranks": [0, 1], "captions": None, "source": "test", "meta": None})
        writer.advance(i + 1)
    writer.finish({"group_size": 2})
    for kind in ("qwen_image", "sd15"):
        family = load(tiny_path(kind))
        with torch.no_grad():  # in one batch, as the cache encodes a shard's texts
            encoded = family.encode_prompts(prompts, group_size=1).prompt_embeds[:, 0]
        full = encoded.shape[1]
        longest = max(int(e.ne(0).any(dim=1).nonzero().max()) + 1 for e in encoded)
        folder = build_cache(tmp_path / "prefs", family, resolution=RES, shard_size=4, progress=False)
        stored = load_file(folder / "shard-00000.safetensors")["text_embeds"]
        if kind == "qwen_image":
            assert full == 512 and stored.shape[1] == longest < full  # up to the long prompt's last token
        else:
            assert stored.shape[1] == full  # nothing is zero: nothing trimmed
        cache = LatentCache.open(tmp_path / "prefs", load(tiny_path(kind), load_vae=False, load_text_encoders=False), RES)
        for i, want in enumerate(encoded):
            assert torch.equal(cache.get(i)["prompt_embeds"], want.float()), (kind, i)
