"""The output-folder rule (diffalign/outputs.py), by the hash of every file: each builder, ``cache``,
``score --into``, ``make-tiny`` and ``train``, run again with ``--overwrite`` (``overwrite=true``;
``cache`` and ``make-tiny`` simply again) into an output folder that also holds foreign files,
changes no foreign byte; pointed at another command's inputs or outputs, it is refused and
changes no byte at all."""

import hashlib
import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from diffalign.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs" / "tiny"


def _png(seed: int, side: int = 32) -> bytes:
    buf = io.BytesIO()
    pixels = torch.randint(0, 256, (side, side, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The inputs: a tiny SD1.5 pipeline, a tiny CLIP (PickScore), a tiny T5, a Pick-a-Pic-style source,
    a video-pairs source, a prompts file, and a pair dataset built from the source."""
    from diffalign.data.videos import encode_video
    from diffalign.rewards.tiny import save_tiny_clip
    from diffalign.testing import save_tiny_pipeline, save_tiny_t5

    root = tmp_path_factory.mktemp("ws")
    paths = {"model": save_tiny_pipeline("sd15", root / "model"), "clip": save_tiny_clip(root / "clip"),
             "t5": save_tiny_t5(root / "t5")}
    source = root / "source"
    source.mkdir()
    rows = [{"caption": f"a red cat {i}", "jpg_0": _png(2 * i), "jpg_1": _png(2 * i + 1), "label_0": 1.0,
             "label_1": 0.0, "are_different": True, "has_label": True} for i in range(4)]
    pq.write_table(pa.Table.from_pylist(rows), source / "train-00000.parquet")
    paths["source"] = source
    videos = root / "videos"
    videos.mkdir()
    ramp = torch.linspace(0.2, 1, 16)[None, :].expand(16, 16)
    with open(videos / "pairs.jsonl", "w") as handle:
        for i in range(2):
            names = []
            for j in range(2):
                (videos / f"clip{i}{j}.mp4").write_bytes(encode_video(torch.stack([ramp * (0.5 + 0.2 * j)] * 3)[None]
                                                                      .expand(5, 3, 16, 16).contiguous()))
                names.append(f"clip{i}{j}.mp4")
            handle.write(json.dumps({"prompt": f"a video {i}", "video_0": names[0], "video_1": names[1],
                                     "label_0": 1, "label_1": 0}) + "\n")
    paths["videos"] = videos / "pairs.jsonl"
    (root / "prompts.txt").write_text("a red cat\na blue dog\n")
    paths["prompts"] = root / "prompts.txt"
    assert main(["build", "pick-a-pic", str(source), "--out", str(root / "pairs"), "--no-progress"]) == 0
    paths["pairs"] = root / "pairs"
    paths["root"] = root
    return paths


def _commands(ws, out: Path) -> dict:
    """Each command writing into ``out`` (the latent cache: into the dataset copy ``out``), and how
    it is told to start again."""
    p, again = {k: str(v) for k, v in ws.items()}, ["--overwrite"]
    return {
        "pick-a-pic": (["build", "pick-a-pic", p["source"], "--out", str(out), "--no-progress"], again),
        "video-pairs": (["build", "video-pairs", p["videos"], "--out", str(out), "--no-progress"], again),
        "experts": (["build", "experts", "--from", p["pairs"], "--out", str(out), "--no-progress"], again),
        "filter": (["build", "filter", p["pairs"], "--out", str(out), "--reward", "pickscore", "--reward-path", p["clip"]],
                   again),
        "dual-captions": (["build", "dual-captions", p["pairs"], "--out", str(out), "--strategy", "perturbation",
                           "--text-model", p["t5"], "--no-progress"], again),
        "synthetic": (["build", "synthetic", p["prompts"], "--out", str(out), "--generator", p["model"],
                       "--images-per-prompt", "2", "--steps", "1", "--height", "32", "--width", "32",
                       "--reward", "pickscore", "--reward-path", f"pickscore={p['clip']}", "--no-progress"], again),
        "score --into": (["score", "--images", p["pairs"], "--reward", "pickscore", "--model", p["clip"],
                          "--into", str(out), "--no-progress"], again),
        "cache": (["cache", str(out), "--model", p["model"], "--resolution", "32", "--no-progress"], []),
        "make-tiny": (["make-tiny", "--out", str(out)], []),
        "train": (["train", "--config", str(CONFIGS / "sft.yaml"), f"model.path={p['model']}", f"data.path={p['pairs']}",
                   f"output_dir={out}", "max_steps=1", "data.cache=false", "logging.progress_bar=false"],
                  ["overwrite=true"]),
    }


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` and its SHA-256 (the locks' contents name their holder: left out)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


COMMANDS = ["pick-a-pic", "video-pairs", "experts", "filter", "dual-captions", "synthetic", "score --into", "cache",
            "make-tiny", "train"]


@pytest.mark.parametrize("command", COMMANDS)
def test_starting_again_deletes_only_what_the_command_wrote(command, ws, tmp_path):
    out = tmp_path / "out"
    if command == "cache":  # its output folder is the dataset's cache/<model>-<size>
        shutil.copytree(ws["pairs"], out)
    args, again = _commands(ws, out)[command]
    assert main(args) == 0
    own = out / "cache" / "sd-32" if command == "cache" else out
    foreign = {own / "notes.txt": b"mine", own / "mine" / "keep.bin": bytes(range(256))}
    for path, data in foreign.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    inputs = _tree(ws["root"])
    assert main(args + again) == 0, command
    assert all(path.read_bytes() == data for path, data in foreign.items()), command
    assert _tree(ws["root"]) == inputs  # nothing it read changed


def _refusals(ws, tmp_path) -> list[tuple[str, Path]]:
    """(command, output folder) pairs that break the rule: an input of the command itself, a folder
    holding one, another command's input or output."""
    other = tmp_path / "experts"
    assert main(_commands(ws, other)["experts"][0]) == 0  # another builder's dataset
    return [
        ("pick-a-pic", ws["source"]), ("pick-a-pic", ws["root"]), ("pick-a-pic", other),
        ("video-pairs", ws["videos"].parent), ("experts", ws["pairs"]), ("filter", ws["model"]),
        ("dual-captions", ws["t5"]), ("synthetic", ws["model"]), ("synthetic", ws["pairs"]),
        ("score --into", ws["pairs"]), ("score --into", other), ("make-tiny", ws["pairs"]),
        ("make-tiny", ws["root"]), ("train", ws["pairs"]), ("train", ws["model"]), ("train", other),
        ("train", ws["root"]),
    ]


def test_no_command_writes_where_another_reads_or_wrote(ws, tmp_path, capsys):
    cases = _refusals(ws, tmp_path)
    before = _tree(ws["root"]), _tree(tmp_path)
    for command, out in cases:
        args, again = _commands(ws, out)[command]
        capsys.readouterr()
        assert main(args + again) == 1, (command, out)
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err, (command, out, err)
    # The latent cache writes only into a cache folder of its own: another's files there are refused.
    foreign_cache = ws["pairs"] / "cache" / "sd-32"
    foreign_cache.mkdir(parents=True)
    (foreign_cache / "shard-00000.safetensors").write_bytes(b"not ours")
    capsys.readouterr()
    assert main(_commands(ws, ws["pairs"])["cache"][0]) == 1
    assert "is not empty (shard-00000.safetensors) and holds no latent cache" in capsys.readouterr().err
    shutil.rmtree(ws["pairs"] / "cache")
    assert (_tree(ws["root"]), _tree(tmp_path)) == before
