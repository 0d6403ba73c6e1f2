"""Synthetic ranked preference data, the recipe of RankDPO's Syn-Pic (Karthik et al., 2025,
"Scalable Ranked Preference Optimization for Text-to-Image Generation").

For every prompt, each of ``M`` generator pipelines (diffusers folders or hub ids, any family
``DiffusionPipeline`` loads) draws ``N`` images from recorded seeds; a reward model (usually an
:class:`~diffalign.rewards.Ensemble`) scores all ``K = M · N`` images against the prompt; the row
holds them best first with their scores and ranks (``0`` = best, equal scores share a rank).

Seeds: image ``n`` of prompt ``p`` starts from the noise of a CPU ``torch.Generator`` seeded with
``seed + p · N + n``, with every generator, so a row is reproducible on its own, whatever the
device, the batching or the number of processes (up to float rounding). ``meta``
records, per image (best-first order), the generator, the seed and, for an ensemble, each
member's raw score.

Scale: prompts are split across processes with ``accelerate`` (prompt ``p`` goes to process
``p mod P``); each process writes its own resumable part under ``.parts/``, and the main process
then merges the parts in prompt order, so the dataset is the same for any ``P``. Generation runs
in half precision on GPU, batched over prompts. A killed build resumes (shard by shard) when run
again with the same options. ``pairs`` also derives a pair dataset at ``<out>/pairs``.

Video: with text-to-video generators (Wan) and ``frames``, each sample is a clip; an image reward
scores it averaged over its frames (:class:`~diffalign.rewards.video.FrameAveraged`, all frames),
the rows store MP4 clips (lossy: the reward saw the frames before compression) and the manifest
says ``"media": "video"``, so the dataset trains the Wan family directly.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import io
import json
import shutil
from pathlib import Path
from typing import Iterator, Sequence

from tqdm.auto import tqdm

from diffalign.arguments import COUNT, SCALE, SEED, SIDE
from diffalign.builders.generators import Generators, prompts_per_call, resume_point
from diffalign.builders.ranked_pairs import PAIR_MODES, ranked_to_pairs
from diffalign.builders.scoring import (
    competition_ranks, key_values, load_reward_from_args, reward_info, score_group, video_reward,
)
from diffalign.config import torch_dtype
from diffalign.data.records import check_output
from diffalign.data.schema import MANIFEST
from diffalign.data.writer import BuildError, ShardWriter, add_writer_arguments

BUILDER = "synthetic-ranked"
PARTS = ".parts"
OUTPUTS = (PARTS, "pairs")
"""What the builder writes in its folder beside the dataset: the processes' parts before they are
merged, and the ``--pairs`` dataset."""


def png_bytes(image) -> bytes:
    """A PIL image as PNG bytes (lossless: the reward saw exactly these pixels)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def media_bytes(sample, fps: int = 16) -> bytes:
    """A sample as stored: a PIL image as PNG, a video (uint8 ``[F, 3, H, W]``) as MP4."""
    if hasattr(sample, "save"):
        return png_bytes(sample)
    from diffalign.data.videos import encode_video

    return encode_video(sample, fps=fps)


def ranked_row(index: int, prompt: str, images: list, generators: list[str], seeds: list[int],
               scores: list[float], members: dict[str, list[float]], fps: int = 16) -> dict:
    """One group row, best first (a stable sort: equal scores keep generation order)."""
    order = sorted(range(len(images)), key=lambda i: -scores[i])
    sorted_scores = [float(scores[i]) for i in order]
    meta = {
        "prompt_index": index,
        "generators": [generators[i] for i in order],
        "seeds": [seeds[i] for i in order],
        "member_scores": {label: [float(v[i]) for i in order] for label, v in members.items()},
    }
    return {
        "id": f"{index:08d}", "prompt": prompt,
        "images": [{"bytes": media_bytes(images[i], fps), "path": None} for i in order],
        "scores": sorted_scores, "ranks": competition_ranks(sorted_scores), "captions": None,
        "source": BUILDER, "meta": json.dumps(meta),
    }


def generate_rows(indices: Sequence[int], prompts: Sequence[str], generators: Generators, reward, *,
                  images_per_prompt: int, seed: int, batch_size: int, bar=None,
                  fps: int = 16, skip: int = 0) -> Iterator[tuple[int, dict]]:
    """``(prompt index, ranked row)`` for each of ``indices`` after the first ``skip``, in order
    (the skipped ones are drawn, so that the calls are those of an uninterrupted build:
    :func:`~diffalign.builders.generators.resume_point`).

    Prompts go through the pipelines ``max(1, batch_size // N)`` at a time, so each call draws
    at most ``batch_size`` images.
    """
    n = images_per_prompt
    per_call = prompts_per_call(batch_size, n)
    for start in range(0, len(indices), per_call):
        block = list(indices[start:start + per_call])
        call_prompts = [prompts[p] for p in block for _ in range(n)]
        call_seeds = [seed + p * n + i for p in block for i in range(n)]
        drawn = [generators.draw(g, call_prompts, call_seeds, batch_size) for g in range(len(generators.pipes))]
        for j, p in enumerate(block):
            images, names, seeds = [], [], []
            for g, path in enumerate(generators.paths):
                images += drawn[g][j * n:(j + 1) * n]
                names += [path] * n
                seeds += call_seeds[j * n:(j + 1) * n]
            if start + j < skip:
                continue
            scores, members = score_group(reward, images, prompts[p])
            if bar is not None:
                bar.update(len(images))
            yield p, ranked_row(p, prompts[p], images, names, seeds, scores, members, fps)


def build_synthetic(
    prompts: Sequence[str],
    generators: Sequence[str],
    out: str | Path,
    reward,
    *,
    images_per_prompt: int = 4,
    seed: int = 0,
    steps: int = 30,
    guidance_scale: float | None = None,
    height: int | None = None,
    width: int | None = None,
    batch_size: int = 8,
    dtype: str = "auto",
    pairs: str | None = None,
    shard_size: int = 100,
    overwrite: bool = False,
    progress: bool = True,
    frames: int | None = None,
    fps: int = 16,
) -> dict:
    """Build (or resume building) a ranked dataset; run under ``accelerate launch`` to split it.

    Args:
        prompts: the prompt set (see :func:`diffalign.data.prompts.read_prompts`).
        generators: ``M`` diffusers pipeline folders or hub ids.
        out: the dataset folder.
        reward: a :class:`~diffalign.rewards.RewardModel` (an ``Ensemble`` for several), on its device.
        images_per_prompt: ``N``; rows hold ``K = M · N`` images.
        seed: base seed (image ``n`` of prompt ``p``: ``seed + p · N + n``).
        steps, guidance_scale, height, width: sampling options (``None``: pipeline default).
        batch_size: images per pipeline call.
        dtype: ``auto`` (fp16 on GPU, fp32 on CPU), ``fp32``, ``fp16`` or ``bf16``.
        pairs: ``None``, ``best-worst`` or ``all``: also write ``<out>/pairs`` (see
            :func:`~diffalign.builders.ranked_pairs.ranked_to_pairs`).
        shard_size: rows (prompts) per shard; the unit of resumption.
        overwrite: discard what ``out`` holds.
        frames, fps: text-to-video generators: frames per clip (Wan: 1 + 4n) and the stored clips'
            frame rate (16, Wan 2.1's). An image reward then scores the mean over each clip's frames.

    Returns:
        The manifest of the ranked dataset (on every process).
    """
    import torch
    from accelerate import PartialState

    if len(generators) * images_per_prompt < 2:
        raise BuildError("a ranked group needs at least 2 images: use more generators or --images-per-prompt")
    if pairs not in (None, *PAIR_MODES):
        raise BuildError(f"pairs must be one of {PAIR_MODES}, not {pairs!r}")
    prompts = list(prompts)
    state = PartialState(cpu=not torch.cuda.is_available())
    if dtype == "auto":
        dtype = "fp16" if state.device.type == "cuda" else "fp32"
    options = dict(
        prompts=len(prompts), prompts_sha256=hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
        generators=[str(g) for g in generators], images_per_prompt=images_per_prompt, seed=seed, steps=steps,
        guidance_scale=guidance_scale, height=height, width=width, dtype=dtype, reward=reward.label,
        shard_size=shard_size,
    )
    if frames is not None:  # only for video: image builds begun before keep their options
        options.update(frames=frames, fps=fps)
        reward = video_reward(reward)
    out = Path(out)
    inputs = {"generators": [str(g) for g in generators]}
    if state.is_main_process:
        # Its record first, before any process writes a part: from then on the folder is this build's.
        # With overwrite, what this command wrote (the dataset, its pairs, unmerged parts) goes first.
        ShardWriter(out, builder=BUILDER, options=options, shard_size=shard_size, outputs=OUTPUTS, overwrite=overwrite,
                    inputs=inputs)
    state.wait_for_everyone()
    extra = {"generators": options["generators"], "reward_models": reward_info(reward),
             "group_size": len(generators) * images_per_prompt, "images_per_prompt": images_per_prompt}
    if frames is not None:
        extra.update(media="video", frames=frames, fps=fps)
    weights_dtype = torch_dtype(dtype)
    run = dict(images_per_prompt=images_per_prompt, seed=seed, batch_size=batch_size, fps=fps)
    sampling = dict(steps=steps, guidance_scale=guidance_scale, height=height, width=width, frames=frames)
    k = len(generators) * images_per_prompt

    if (out / MANIFEST).exists():  # finished before: check the options, change nothing
        manifest = ShardWriter(out, builder=BUILDER, options=options, shard_size=shard_size, outputs=OUTPUTS).finish()
    elif state.num_processes == 1:
        writer = ShardWriter(out, builder=BUILDER, options=options, shard_size=shard_size, outputs=OUTPUTS)
        if not writer.complete:
            pipes = Generators(generators, state.device, weights_dtype, **sampling)
            start, skip = resume_point(writer.position, batch_size, images_per_prompt)
            with tqdm(total=len(prompts) * k, initial=writer.position * k, unit=" img", desc="synthetic",
                      disable=not progress) as bar:
                for p, row in generate_rows(range(start, len(prompts)), prompts, pipes, reward, bar=bar, skip=skip,
                                            **run):
                    writer.add(row)
                    writer.advance(p + 1)
        manifest = writer.finish(extra)
    else:
        part = out / PARTS / f"rank-{state.process_index}-of-{state.num_processes}"
        mine = list(range(state.process_index, len(prompts), state.num_processes))
        writer = ShardWriter(part, builder=BUILDER, options={**options, "part": part.name}, shard_size=shard_size)
        if not writer.complete:
            pipes = Generators(generators, state.device, weights_dtype, **sampling)
            with tqdm(total=len(mine) * k * state.num_processes, initial=writer.position * k * state.num_processes,
                      unit=" img", desc="synthetic", disable=not progress or not state.is_main_process) as bar:
                scaled = _Scaled(bar, state.num_processes)
                start, skip = resume_point(writer.position, batch_size, images_per_prompt)
                for local, (_, row) in enumerate(generate_rows(mine[start:], prompts, pipes, reward, bar=scaled,
                                                               skip=skip, **run), start=writer.position):
                    writer.add(row)
                    writer.advance(local + 1)
        writer.finish()
        state.wait_for_everyone()
        if state.is_main_process:
            parts = sorted((out / PARTS).glob(f"rank-*-of-{state.num_processes}"))
            _merge_parts(parts, out, options, shard_size, extra)
        state.wait_for_everyone()
        manifest = json.loads((out / MANIFEST).read_text())
    if pairs and state.is_main_process:
        ranked_to_pairs(out, out / "pairs", pairs, shard_size=shard_size)
    state.wait_for_everyone()
    return manifest


class _Scaled:
    """A progress-bar proxy counting the main process's images for all ``P`` processes."""

    def __init__(self, bar, factor: int):
        self.bar, self.factor = bar, factor

    def update(self, n: int) -> None:
        self.bar.update(n * self.factor)


def _merge_parts(parts: list[Path], out: Path, options: dict, shard_size: int, extra: dict) -> None:
    """Write the rows of the per-process parts into ``out`` in prompt order (resumable), then
    remove the parts."""
    from diffalign.data.dataset import PreferenceDataset

    writer = ShardWriter(out, builder=BUILDER, options=options, shard_size=shard_size, outputs=OUTPUTS)
    if not writer.complete:
        merged = heapq.merge(*(iter(PreferenceDataset.open(p)) for p in parts), key=lambda r: r["id"])
        for position, row in enumerate(merged):
            if position < writer.position:
                continue
            writer.add(row)
            writer.advance(position + 1)
        writer.finish({**extra, "processes": len(parts)})
    shutil.rmtree(out / PARTS, ignore_errors=True)


# ----------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``diffalign build synthetic`` and ``datasets_builders/synthetic_ranked.py``."""
    parser.add_argument("prompts", help="prompt set: .txt, .json, .jsonl, .csv/.tsv file, or a hub dataset id")
    parser.add_argument("--prompt-column", default=None, help="column of records / CSV / dataset (default: prompt, text or caption)")
    parser.add_argument("--prompt-split", default="train", help="split of a hub prompt dataset (default: train)")
    parser.add_argument("--limit-prompts", type=COUNT, default=None, help="use only the first N prompts")
    parser.add_argument("--out", required=True, help="dataset folder to write (resumes an interrupted build)")
    parser.add_argument("--generator", action="append", required=True,
                        help="diffusers pipeline folder or hub id; repeat for several generators")
    parser.add_argument("--images-per-prompt", type=COUNT, default=4, help="images per prompt from each generator (default: 4)")
    parser.add_argument("--seed", type=SEED, default=0, help="base seed; image n of prompt p uses seed + p*N + n (default: 0)")
    parser.add_argument("--steps", type=COUNT, default=30, help="sampling steps (default: 30)")
    parser.add_argument("--guidance-scale", type=SCALE, default=None, help="classifier-free guidance (default: the pipeline's)")
    parser.add_argument("--height", type=SIDE, default=None, help="image height (default: the pipeline's)")
    parser.add_argument("--width", type=SIDE, default=None, help="image width (default: the pipeline's)")
    parser.add_argument("--batch-size", type=COUNT, default=8, help="images per pipeline call (default: 8)")
    parser.add_argument("--frames", type=COUNT, default=None,
                        help="text-to-video generators (Wan): frames per clip, 1 + 4n (e.g. 81); the rows hold MP4 clips")
    parser.add_argument("--fps", type=COUNT, default=16, help="frame rate of the stored clips (default: 16, Wan 2.1's)")
    parser.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                        help="generator precision; auto = fp16 on GPU, fp32 on CPU")
    parser.add_argument("--reward", action="append", required=True, help="reward model name; repeat for an ensemble")
    parser.add_argument("--reward-path", action="append", metavar="NAME=PATH", help="weights of a reward (folder, file or hub id)")
    parser.add_argument("--reward-weight", action="append", metavar="NAME=W", help="ensemble weight of a reward (default: 1)")
    parser.add_argument("--reward-stats", default=None, help="JSON {label: {mean, std}} z-normalising the ensemble members")
    parser.add_argument("--pairs", choices=PAIR_MODES, default=None, help="also write OUT/pairs: best-vs-worst or all pairs")
    add_writer_arguments(parser, shard_size=100, unit="prompts")


def run(args: argparse.Namespace) -> int:
    """Run the builder from parsed arguments."""
    from diffalign.data.prompts import read_prompts

    reward_paths = list(key_values(args.reward_path, "--reward-path").values())
    check_output(args.out, BUILDER, {"prompts": args.prompts, "--generator": args.generator,  # before any weights load
                                     "--reward-path": reward_paths, "--reward-stats": args.reward_stats})
    prompts = read_prompts(args.prompts, args.prompt_column, split=args.prompt_split, limit=args.limit_prompts)
    reward = load_reward_from_args(args)
    manifest = build_synthetic(
        prompts, args.generator, args.out, reward, images_per_prompt=args.images_per_prompt, seed=args.seed,
        steps=args.steps, guidance_scale=args.guidance_scale, height=args.height, width=args.width,
        batch_size=args.batch_size, dtype=args.dtype, pairs=args.pairs, shard_size=args.shard_size,
        overwrite=args.overwrite, progress=not args.no_progress, frames=args.frames, fps=args.fps,
    )
    media = "videos" if args.frames else "images"
    print(f"wrote {manifest['rows']} ranked groups of {manifest['group_size']} {media} to {args.out}")
    return 0
