"""Errors a user causes, through the command line: one ``error:`` line without a traceback
(``--debug`` adds it), and nothing lost. A full disk is a real one here: a small tmpfs mounted
for the test (skipped where mounting is not allowed)."""

import errno
import pickle
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffalign.cli import main
from diffalign.errors import describe
from diffalign.testing import write_random_pairs

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs" / "tiny"


@pytest.fixture(scope="module")
def pair_data(tmp_path_factory):
    return write_random_pairs(tmp_path_factory.mktemp("pairs") / "prefs", pairs=4, resolution=32)


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(kib) -> folder`` on a tmpfs of that size, unmounted after the test."""
    mounted = []

    def make(kib: int) -> Path:
        folder = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()[:80]})")
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _grow(folder: Path, kib: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={kib}k", str(folder)], check=True)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _train_args(tiny_path, data, out, *extra):
    return ["train", "--config", str(CONFIGS / "diffusion_dpo.yaml"), f"model.path={tiny_path('sd15')}",
            f"data.path={data}", f"output_dir={out}", "logging.progress_bar=false", "checkpoint_every=1",
            "keep_checkpoints=0", *extra]


def test_a_full_disk_during_training_loses_nothing_and_resumes(tiny_path, pair_data, small_disk, tmp_path, capsys):
    """Each checkpoint takes ~180 KiB: the 6th of 6 does not fit in 1 MiB."""
    straight = tmp_path / "straight"
    assert main(_train_args(tiny_path, pair_data, straight, "max_steps=6")) == 0
    disk = small_disk(1024)
    out = disk / "run"
    capsys.readouterr()
    assert main(_train_args(tiny_path, pair_data, out, "max_steps=6")) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "no space left on the device" in line and "resume=latest" in line
    saved = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert saved and all(not name.startswith(".tmp") for name in saved)  # the half checkpoint is gone
    _grow(disk, 4096)  # the user frees space
    assert main(_train_args(tiny_path, pair_data, out, "max_steps=6", "resume=latest")) == 0
    want = load_file(str(straight / "lora" / "pytorch_lora_weights.safetensors"))
    got = load_file(str(out / "lora" / "pytorch_lora_weights.safetensors"))
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_full_disk_during_a_build_keeps_its_shards_and_continues(small_disk, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from diffalign.data import PreferenceDataset

    def jpeg(seed: int) -> bytes:  # noise, so that JPEG cannot shrink it: ~20 KiB a picture
        import io

        from PIL import Image

        buf = io.BytesIO()
        pixels = torch.randint(0, 256, (96, 96, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(buf, "JPEG", quality=95)
        return buf.getvalue()

    rows = [{"caption": f"prompt {i}", "jpg_0": jpeg(2 * i), "jpg_1": jpeg(2 * i + 1), "label_0": 1.0, "label_1": 0.0,
             "are_different": True, "has_label": True} for i in range(24)]
    source = tmp_path / "source"
    source.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), source / "train-00000.parquet")
    args = ["build", "pick-a-pic", str(source), "--shard-size", "4", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "straight")]) == 0
    disk = small_disk(160)
    capsys.readouterr()
    assert main([*args, "--out", str(disk / "pairs")]) == 1
    assert "no space left on the device" in _one_error_line(capsys.readouterr().err)
    _grow(disk, 4096)
    assert main([*args, "--out", str(disk / "pairs")]) == 0
    want, got = PreferenceDataset.open(tmp_path / "straight"), PreferenceDataset.open(disk / "pairs")
    assert [got[i]["id"] for i in range(len(got))] == [want[i]["id"] for i in range(len(want))] and len(got) == 24


def test_cache_refuses_a_disk_it_cannot_fill_before_the_model_loads(tiny_path, pair_data, small_disk, capsys, monkeypatch):
    import diffalign.families

    disk = small_disk(256)
    data = disk / "prefs"
    shutil.copytree(pair_data, data, ignore=shutil.ignore_patterns("cache"))
    free = shutil.disk_usage(disk).free
    (disk / "filler").write_bytes(b"\0" * max(free - 8 * 1024, 0))  # 8 KiB left; the latents alone take 32 KiB

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(diffalign.families, "load", no_model)
    capsys.readouterr()
    for resolution in ("32", "64"):
        assert main(["cache", str(data), "--model", str(tiny_path("sd15")), "--resolution", resolution,
                     "--no-progress"]) == 1
        line = _one_error_line(capsys.readouterr().err)
        assert "the latent cache" in line and "needs at least" in line and "free space" in line
    assert not (data / "cache").exists() or not any((data / "cache").rglob("*.safetensors"))


@pytest.mark.parametrize("how", ["no space", "quota", "safetensors wording"])
def test_describe_names_a_full_disk_in_each_wording(how):
    err = {"no space": OSError(errno.ENOSPC, "No space left on device", "/x/shard.parquet"),
           "quota": OSError(errno.EDQUOT, "Disk quota exceeded", "/x/y"),
           "safetensors wording": RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),
           }[how]
    message = describe(err)
    assert message and ("no space left" in message or "quota" in message) and "run the same command again" in message
    assert describe(RuntimeError("a bug")) is None  # anything else keeps its traceback


class _Code:
    """Something a pickle would run when loaded."""

    def __reduce__(self):
        return (print, ("pwned",))


def _pickled_model(folder: Path, tiny_path, component: str) -> Path:
    """The tiny SD1.5 pipeline with one component's weights replaced by a pickle that runs code."""
    shutil.copytree(tiny_path("sd15"), folder)
    sub = folder / component
    weights = load_file(str(next(sub.glob("*.safetensors"))))
    for file in sub.glob("*.safetensors"):
        file.unlink()
    with open(sub / "diffusion_pytorch_model.bin", "wb") as handle:
        pickle.dump({"weights": weights, "payload": _Code()}, handle)
    return folder


def test_a_pickle_that_runs_code_is_refused_in_one_line(tiny_path, pair_data, tmp_path, capfd):
    unet, vae = (_pickled_model(tmp_path / f"model-{c}", tiny_path, c) for c in ("unet", "vae"))
    data = tmp_path / "prefs"
    shutil.copytree(pair_data, data, ignore=shutil.ignore_patterns("cache"))
    capfd.readouterr()
    for args in (["train", "--config", str(CONFIGS / "sft.yaml"), f"model.path={unet}", f"data.path={pair_data}",
                  f"output_dir={tmp_path / 'run'}", "data.cache=false"],
                 ["cache", str(data), "--model", str(vae), "--resolution", "32", "--no-progress"]):
        status = main(args)
        out = capfd.readouterr()
        assert status == 1 and "pwned" not in out.out
        line = _one_error_line(out.err)
        assert "holds pickled Python objects, which diffalign never loads" in line, line
    main(["--debug", "train", "--config", str(CONFIGS / "sft.yaml"), f"model.path={unet}", f"data.path={pair_data}",
          f"output_dir={tmp_path / 'run2'}", "data.cache=false"])
    assert "Traceback" in capfd.readouterr().err  # --debug shows where

