"""``diffalign score``: score a folder of images, or every image of a preference dataset, with one
or more reward models, in batches, and write the scores as Parquet or JSON.

Prompts for a folder come from ``--prompts FILE`` (``.txt``: one line per image in sorted file
order; ``.json``: ``{file: prompt}`` or a list of records; ``.jsonl``: records with ``file_name``
and ``prompt``/``text``), from ``--prompt TEXT`` for every image, or from the folder's own
``metadata.jsonl`` (the ``datasets`` imagefolder convention). A preference dataset supplies its
own prompts (or per-image captions).

Output columns: ``image`` (path relative to the folder, or ``<row id>/<k>``), ``prompt``, and one
column per reward named by its label (``pickscore``, ``hpsv2.1``, ``clip_score[<backbone>]``...).
The file also records which weights each label came from and per-reward mean, std and count.

``--into OUT`` (a preference dataset and one ``--reward``) writes a new preference dataset instead:
the same rows with their ``scores`` column filled (see :mod:`diffalign.rewards.into_dataset`).

Which items a folder or dataset holds, and how each is read, is :mod:`diffalign.rewards.score_inputs`.

Videos: ``--images`` may instead hold video files (``.mp4``, ``.webm``, ``.mkv``, ``.mov``, ``.avi``)
and/or frame folders (a folder of frame images, in name order, is one video), or be a preference
dataset whose manifest says ``"media": "video"``. A folder is read as videos when it holds a video
file, or when ``--frames``, ``--max-frames`` or a video-only reward (``temporal_consistency``) is
given; then each folder directly holding images is one video. Videos are decoded with
:func:`~diffalign.data.videos.read_frames` (``--max-frames N``: the first N frames only); an image
reward scores the mean over ``--frames`` (:class:`~diffalign.rewards.video.FrameAveraged`:
``all``, ``first`` or ``every:N``; its cost is one image score per chosen frame), and its column
is named ``<label>@frames:<choice>``; ``temporal_consistency`` scores all decoded frames. The key
column is then ``video``, and ``--batch-size`` counts frames: videos are gathered until their
scored frames reach it (a video is never split). Decoding video files needs PyAV
(the ``video`` extra: ``pip install 'diffalign[video]'``); an undecodable video is skipped and counted, like an unreadable image.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from diffalign.arguments import COUNT
from diffalign.config import DTYPE_NAMES, torch_dtype
from diffalign.rewards.base import ScoreInputError

from diffalign.rewards.score_inputs import (
    Item, Reader, check_video_decoding, dataset_items, folder_items, holds_videos, image_reader, video_folder_items,
    video_reader,
)


# ----------------------------------------------------------------------------- shared options
def add_reward_arguments(parser: argparse.ArgumentParser, several: bool, required: bool = True,
                         videos: bool = False) -> None:
    """``--reward``, ``--model``, ``--dtype``, ``--device``, ``--batch-size``, ``--no-progress``
    (also used by ``reward_models/agreement.py``); ``videos`` lists the video-only rewards too."""
    from diffalign.rewards import REWARDS, VIDEO_REWARDS

    names = ", ".join([*REWARDS, *(VIDEO_REWARDS if videos else ())])
    if several:
        parser.add_argument("--reward", action="append", required=required, metavar="NAME",
                            help=f"reward model; repeat for several ({names})")
    else:
        parser.add_argument("--reward", required=True, metavar="NAME", help=f"reward model ({names})")
    parser.add_argument("--model", default=None, help="weights of the reward (local file or folder, or hub id); "
                        "default: the published ones. Only with a single --reward")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32", help="dtype the reward models run in (default: fp32)")
    parser.add_argument("--device", default="auto", help="torch device; auto = cuda when available (default: auto)")
    parser.add_argument("--batch-size", type=COUNT, default=16, help="images per reward-model call (default: 16)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def load_rewards_from_args(args: argparse.Namespace) -> list:
    """The reward models named by :func:`add_reward_arguments`' options."""
    from diffalign.rewards import load_reward

    names = args.reward if isinstance(args.reward, list) else [args.reward]
    if args.model is not None and len(names) != 1:
        raise ScoreInputError("--model names the weights of one reward; give a single --reward with it")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    return [load_reward(name, args.model, dtype=torch_dtype(args.dtype), device=device) for name in names]


# ----------------------------------------------------------------------------- inputs
# ----------------------------------------------------------------------------- scoring
def score_items(rewards: list, items: list[Item], batch_size: int = 16, progress: bool = True,
                strict: bool = False, reader: Reader | None = None) -> tuple[list[dict], list[str]]:
    """Rows ``{"image" (or "video"), "prompt", <label>: score, ...}`` and the keys of unreadable
    samples (skipped; an error under ``strict``). Samples are read one by one and scored in
    batches of ``batch_size`` images (for videos: scored frames, whole videos)."""
    from tqdm.auto import tqdm

    reader = reader or image_reader()
    rows, skipped, batch, pending = [], [], [], 0
    bar = tqdm(total=len(items), unit=reader.media, disable=not progress, desc="scoring")
    for item in items:
        try:
            sample = reader.load(item)
        except reader.fatal:
            raise
        except reader.unreadable as err:  # a path out of the dataset is never opened
            if strict:
                raise ScoreInputError(f"{item.key}: unreadable {reader.media} ({err})") from err
            skipped.append(item.key)
            bar.update(1)
            continue
        batch.append((item, sample))
        pending += reader.size(sample)
        if pending >= batch_size:
            rows += _score_batch(rewards, batch, reader.media)
            bar.update(len(batch))
            batch, pending = [], 0
    if batch:
        rows += _score_batch(rewards, batch, reader.media)
        bar.update(len(batch))
    bar.close()
    return rows, skipped


def _score_batch(rewards: list, batch: list[tuple[Item, object]], key: str) -> list[dict]:
    """One row per item of ``batch``, scored by every reward in one call each."""
    samples, prompts = [sample for _, sample in batch], [item.prompt for item, _ in batch]
    scores = {r.label: r.score(samples, prompts).tolist() for r in rewards}
    return [{key: item.key, "prompt": item.prompt, **{label: s[i] for label, s in scores.items()}}
            for i, (item, _) in enumerate(batch)]


def summarise(rows: list[dict], labels: list[str]) -> dict:
    """``{label: {"mean", "std", "n"}}`` (population std)."""
    out = {}
    for label in labels:
        values = torch.tensor([row[label] for row in rows], dtype=torch.float64)
        out[label] = {"mean": values.mean().item() if len(values) else None,
                      "std": values.std(correction=0).item() if len(values) else None, "n": len(values)}
    return out


def check_scores_file(out: Path, inputs: dict) -> None:
    """``--out`` may be a new file, or a scores file this command wrote before (replaced); never a
    file of the inputs, one inside them, or another file (:mod:`diffalign.outputs`)."""
    from diffalign.outputs import OutputError, check_apart

    check_apart(out, inputs, "--out")
    if out.is_dir():
        raise OutputError(f"--out {out} is a folder; give a .parquet or .json file to write")
    if out.exists() and not _is_scores_file(out):
        raise OutputError(f"--out {out} exists and is not a scores file diffalign wrote; a command never replaces a "
                          "file it did not write: give another --out")


def _is_scores_file(path: Path) -> bool:
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return b"diffalign" in (pq.read_schema(path).metadata or {})
        found = json.loads(path.read_text())
        return isinstance(found, dict) and {"rewards", "summary", "scores"} <= set(found)
    except (OSError, ValueError):  # unreadable as either (pyarrow's errors are ValueErrors): not ours
        return False


def write_scores(out: Path, rows: list[dict], meta: dict) -> None:
    """``.parquet`` (metadata under the schema key ``diffalign``) or ``.json`` (``meta`` + ``scores``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    if out.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = [meta.get("media", "image"), "prompt", *meta["rewards"]]
        table = pa.table({c: [row[c] for row in rows] for c in columns})
        pq.write_table(table.replace_schema_metadata({"diffalign": json.dumps(meta)}), tmp)
    elif out.suffix == ".json":
        tmp.write_text(json.dumps({**meta, "scores": rows}, indent=2))
    else:
        raise ScoreInputError(f"--out must end in .parquet or .json, got {out.name}")
    tmp.replace(out)  # a reader never sees a half-written file


# ----------------------------------------------------------------------------- command
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, type=Path,
                        help="a folder of images (searched recursively), of videos and/or frame folders, or a "
                        "preference dataset folder (has manifest.json; images or, with \"media\": \"video\", videos)")
    parser.add_argument("--prompts", type=Path, default=None,
                        help="prompts file for a folder: .txt (one line per image, sorted order), .json or .jsonl")
    parser.add_argument("--prompt", default=None, help="one prompt for every image of the folder")
    add_reward_arguments(parser, several=True, videos=True)
    parser.add_argument("--frames", default=None, metavar="all|first|every:N",
                        help="videos: the frames an image reward scores, averaged per video (default: all). The cost is "
                        "one image score per chosen frame: all = F per video, every:N = F/N, first = 1; "
                        "temporal_consistency always uses every decoded frame. With videos, --batch-size counts "
                        "scored frames (whole videos per call)")
    parser.add_argument("--max-frames", type=COUNT, default=None, metavar="N",
                        help="videos: decode at most the first N frames of each (default: all of them)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the scores: .parquet or .json (default: scores.parquet)")
    parser.add_argument("--into", type=Path, default=None, metavar="OUT",
                        help="with a preference dataset and one --reward: write a new dataset at OUT, the same rows "
                        "with their scores column filled by the reward (resumable; the source is not changed)")
    parser.add_argument("--shard-size", type=COUNT, default=1000,
                        help="with --into: rows per Parquet shard, the unit of resumption (default: 1000)")
    parser.add_argument("--overwrite", action="store_true", help="with --into: discard what OUT holds and start again")
    parser.add_argument("--strict", action="store_true", help="fail on an unreadable image or video instead of skipping it")


def run(args: argparse.Namespace) -> int:
    from diffalign.errors import DiffalignError

    if args.into is not None:
        return run_into(args)
    if args.out is None:
        args.out = Path("scores.parquet")
    if args.out.suffix not in (".parquet", ".json"):
        print(f"error: --out must end in .parquet or .json, got {args.out.name}", file=sys.stderr)
        return 1
    try:
        # Inputs first: a wrong folder or prompts file should not wait for gigabytes of weights.
        check_scores_file(args.out, {"--images": args.images, "--prompts": args.prompts, "--model": args.model})
        items = input_items(args)
        media = items[0].media if items else "image"
        if media == "video":
            check_video_decoding(items)
        rewards = load_rewards_from_args(args)
        if media == "video":
            from diffalign.rewards.video import FrameAveraged, scores_videos

            frames = args.frames or "all"
            rewards = [r if scores_videos(r) else FrameAveraged(r, frames) for r in rewards]
            reader = video_reader(rewards, args.max_frames)
        else:
            reader = image_reader()
        rows, skipped = score_items(rewards, items, args.batch_size, not args.no_progress, args.strict, reader)
    except (DiffalignError, ValueError) as err:  # a missing PyAV too: one line naming the install
        print(f"error: {err}", file=sys.stderr)
        return 1
    meta = score_meta(args, rewards, rows, skipped, media)
    write_scores(args.out, rows, meta)
    means = ", ".join(f"{label} {s['mean']:.4g}" for label, s in meta["summary"].items() if s["mean"] is not None)
    print(f"scored {len(rows)} {media}s ({len(skipped)} unreadable skipped): {means}; written to {args.out}")
    return 0


def wants_videos(args: argparse.Namespace) -> bool:
    """True when the options only make sense for videos: ``--frames``, ``--max-frames``, a video reward."""
    from diffalign.rewards import VIDEO_REWARDS

    return args.frames is not None or args.max_frames is not None or any(name in VIDEO_REWARDS for name in args.reward)


def input_items(args: argparse.Namespace) -> list[Item]:
    """The items ``--images`` names: a dataset's images or videos, a folder's videos (it holds a
    video file, or the options ask for videos), or a folder's images; options checked first."""
    from diffalign.data.schema import MANIFEST
    from diffalign.rewards import VIDEO_REWARDS, reward_class

    if args.frames is not None:
        from diffalign.rewards.video import parse_frames

        parse_frames(args.frames)
    if args.max_frames is not None and args.max_frames < 1:
        raise ScoreInputError(f"--max-frames must be at least 1, got {args.max_frames}")
    if (args.images / MANIFEST).is_file():
        items = dataset_items(args.images)
        if items and items[0].media == "image" and wants_videos(args):
            raise ScoreInputError(f"{args.images} is a dataset of images: --frames, --max-frames and "
                                  f"{', '.join(VIDEO_REWARDS)} are for videos; drop them")
        return items
    needs_prompts = any(reward_class(name).uses_prompts for name in args.reward)
    if wants_videos(args) or holds_videos(args.images):
        return video_folder_items(args.images, args.prompts, args.prompt, needs_prompts)
    return folder_items(args.images, args.prompts, args.prompt, needs_prompts)


def score_meta(args: argparse.Namespace, rewards: list, rows: list[dict], skipped: list[str], media: str) -> dict:
    """What the scores file records: each label's reward and weights (and frame choice), the summary,
    the skipped keys and, for videos, the media and ``--max-frames``."""
    from diffalign.rewards.video import FrameAveraged, frames_label

    labels = [r.label for r in rewards]
    about = {}
    for label, r in zip(labels, rewards):
        inner = r.reward if isinstance(r, FrameAveraged) else r  # record the image reward a video's frames went to
        about[label] = {"name": inner.name, "weights": str(args.model or inner.default_id)}
        if inner is not r:
            about[label]["frames"] = frames_label(r.frames)
    meta = {"rewards": about, "summary": summarise(rows, labels), "skipped": skipped}
    if media == "video":
        meta.update(media="video", max_frames=args.max_frames)
    return meta


def _into_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the options of ``--into``, or ``None``."""
    from diffalign.data.schema import MANIFEST

    if len(args.reward) != 1:
        return (f"--into fills the one scores column of a dataset: give exactly one --reward (got {len(args.reward)}: "
                f"{', '.join(args.reward)}); to compare several, write them to a file with --out instead")
    if args.out is not None:
        return "--into writes a dataset and --out a scores file: give one of them"
    if args.prompts is not None or args.prompt is not None:
        return "--into scores a preference dataset, which supplies its own prompts: drop --prompts/--prompt"
    if (args.images / MANIFEST).is_file() and json.loads((args.images / MANIFEST).read_text()).get("media") == "video":
        return (f"--into does not score video datasets yet; {args.images} holds videos: write a scores file with "
                "--out instead (drop --into)")
    if args.frames is not None or args.max_frames is not None:
        return "--into scores image datasets: drop --frames/--max-frames"
    if not (args.images / MANIFEST).is_file():
        what = "an unfinished build" if (args.images / ".progress.json").exists() else (
            "a plain folder" if args.images.is_dir() else "not a folder")
        return (f"--into needs --images to be a preference dataset (a folder with {MANIFEST}); {args.images} is {what}. "
                "Build a dataset first (e.g. `diffalign build pick-a-pic ... --out DATASET`), or, for a folder of "
                "images, drop --into and write a scores file with --out")
    if args.shard_size < 1:
        return f"--shard-size must be at least 1, got {args.shard_size}"
    return None


def run_into(args: argparse.Namespace) -> int:
    """``--into``: a copy of the dataset ``--images`` with ``scores`` by the one ``--reward``."""
    from diffalign import stopping
    from diffalign.data.schema import SchemaError
    from diffalign.data.writer import BuildError
    from diffalign.rewards import RewardLoadError
    from diffalign.rewards.into_dataset import DROP_REASON, check_target, score_into_dataset

    problem = _into_problem(args)
    try:
        if problem:
            raise ScoreInputError(problem)
        check_target(args.images, args.into, args.model)  # before gigabytes of weights load
        reward = load_rewards_from_args(args)[0]
        with stopping.stop_requests():  # SIGTERM/Ctrl-C: keep the shards written, resume on the next run
            manifest = score_into_dataset(
                args.images, args.into, reward, weights=str(args.model or reward.default_id), dtype=args.dtype,
                batch_size=args.batch_size, strict=args.strict, shard_size=args.shard_size, overwrite=args.overwrite,
                progress=not args.no_progress)
    except (ScoreInputError, RewardLoadError, SchemaError, BuildError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    counts = manifest["counts"]
    skipped = counts["dropped"].get(DROP_REASON, 0)
    overwritten = manifest["scores_from"]["overwritten_rows"]
    print(f"scored {counts.get('images_scored', 0)} images of {manifest['rows']} rows with {reward.label} "
          f"({skipped} row(s) with an unreadable image skipped"
          + (f"; {overwritten} row(s) had scores, replaced" if overwritten else "") + f"); written to {args.into}")
    return 0
