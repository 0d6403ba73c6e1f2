"""The model and data that ``training/configs/tiny/`` train on: ``diffalign make-tiny``.

A fresh clone has neither; this writes both in a few seconds, with no download:

    <out>/model    the shipped toy base model (an SD1.5-style pipeline at 32 px, :mod:`.pretrain`)
    <out>/pairs    best-vs-worst pairs of rendered toy scenes, scores and a caption per image
    <out>/ranked   groups of three, best first, with scores (for rank_dpo)
    <out>/experts  the preferred image of each pair alone, one per prompt (K = 1, for diffusion_dro)
    <out>/step_aware  a tiny step-aware preference model with random weights (for spo: it runs, its
                   scores mean nothing; the toy benchmark trains one on the toy pairs)
    <out>/video_model  a tiny random Wan 2.1-style text-to-video pipeline (``diffalign.testing``)
    <out>/video_pairs  pairs of 5-frame MP4 clips (moving gradients, the brighter one preferred; needs
                   the ``video`` extra, PyAV; skipped with a note when it is not installed)

The images are renders of the toy world (:mod:`.world`), ordered by the toy reward, so the
preferred image of each group is the one with the larger object, as in the benchmark.

Running it again replaces what it wrote before, which ``<out>/.make-tiny.json`` records (written
before anything else); a non-empty ``<out>`` without that record is refused (the rule of
:mod:`diffalign.outputs`), and files of other names in its own ``<out>`` are left alone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from diffalign.data.writer import ShardWriter
from diffalign.rewards.tiny import tiny_step_aware
from diffalign.toy.samples import caption, tensor_png
from diffalign.toy.pretrain import base_model
from diffalign.toy.reward import toy_reward
from diffalign.toy.world import PROMPTS, render, sample_scene

GROUPS_PER_PROMPT = 4
RECORD = ".make-tiny.json"
FOLDERS = ("model", "pairs", "ranked", "experts", "step_aware", "video_model", "video_pairs")


def write_starter(out: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the model, pairs and ranked groups into ``out`` (replacing earlier ones).

    Returns:
        ``{"model": ..., "pairs": ..., "ranked": ..., "experts": ..., "step_aware": ...}`` folders.
    """
    from diffalign.builders.experts import build_experts

    out = Path(out)
    folders = {name: out / name for name in FOLDERS}
    _claim(out)
    shutil.rmtree(folders["model"], ignore_errors=True)
    shutil.copytree(base_model(progress=False), folders["model"])
    generator = torch.Generator().manual_seed(seed)
    pairs = ShardWriter(folders["pairs"], builder="make-tiny", options={"seed": seed}, overwrite=True)
    ranked = ShardWriter(folders["ranked"], builder="make-tiny", options={"seed": seed}, overwrite=True)
    for p, prompt in enumerate(PROMPTS):
        for g in range(GROUPS_PER_PROMPT):
            images = torch.stack([render(sample_scene(generator, prompt)) for _ in range(3)])
            scores = toy_reward(images, [prompt] * 3)
            order = scores.argsort(descending=True).tolist()
            common = {"id": f"{p:02d}-{g:02d}", "prompt": prompt, "source": "toy-render", "meta": None}
            ranked.add({**common, "images": [{"bytes": tensor_png(images[i]), "path": None} for i in order],
                        "scores": scores[order].tolist(), "ranks": [0, 1, 2], "captions": None})
            best, worst = order[0], order[-1]
            pairs.add({**common, "images": [{"bytes": tensor_png(images[i]), "path": None} for i in (best, worst)],
                       "scores": [float(scores[best]), float(scores[worst])], "ranks": [0, 1],
                       "captions": [caption(images[best], prompt), caption(images[worst], prompt)]})
    pairs.finish({"group_size": 2, "reward_models": ["toy_coverage"]})
    ranked.finish({"group_size": 3, "reward_models": ["toy_coverage"]})
    build_experts(folders["pairs"], folders["experts"], overwrite=True, progress=False)
    tiny_step_aware(seed=seed).save_pretrained(folders["step_aware"])
    _write_video_starter(folders, seed)
    return folders


def _claim(out: Path) -> None:
    """Refuse an ``out`` that is neither empty nor make-tiny's own; record that make-tiny writes
    :data:`FOLDERS` there, before it writes any."""
    from diffalign.outputs import refuse_unless_empty

    record = out / RECORD
    if not record.is_file():
        refuse_unless_empty(out, "--out", "output of make-tiny (its .make-tiny.json)")
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"folders": list(FOLDERS)}))


def _write_video_starter(folders: dict[str, Path], seed: int) -> None:
    """The tiny Wan and its clip pairs (``training/configs/tiny/video/``); without PyAV only the model."""
    import importlib.util

    from diffalign.families import FAMILIES
    from diffalign.testing import save_tiny_pipeline, write_random_video_pairs

    # The video family's own tiny pipeline (Wan 2.1-style), asked of the registry by its media.
    video = next(family for family in FAMILIES.values() if family.media == "video" and family.tiny_kinds)
    shutil.rmtree(folders["video_model"], ignore_errors=True)
    save_tiny_pipeline(video.tiny_kinds[0], folders["video_model"], seed=seed)
    if importlib.util.find_spec("av") is None:
        folders.pop("video_pairs")  # nothing written: the CLI's listing must not name it
        return
    write_random_video_pairs(folders["video_pairs"], pairs=8, resolution=32, seed=seed)
