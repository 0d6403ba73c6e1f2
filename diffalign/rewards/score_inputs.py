"""What ``diffalign score`` scores: the items a folder (of images, videos or frame folders) or a
preference dataset holds, each with its prompt, and the readers that turn an item into a sample
(a PIL image, or a uint8 ``[F, 3, H, W]`` video) and say which errors mean "unreadable, skip it"."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from diffalign.rewards.base import ScoreInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_FILE_KEYS = ("file_name", "file", "image", "path")
_PROMPT_KEYS = ("prompt", "text", "caption")


@dataclass
class Item:
    """One image or video to score: ``key`` names it in the output; ``read`` returns an image's
    bytes, or what :func:`~diffalign.data.videos.read_frames` takes for a video (MP4 bytes, a video
    file or a frame folder)."""

    key: str
    prompt: str
    read: Callable[[], bytes | Path]
    media: str = "image"


def folder_items(folder: Path, prompts_file: Path | None = None, prompt: str | None = None,
                 needs_prompts: bool = True) -> list[Item]:
    """The images under ``folder`` (recursively, sorted by relative path) with their prompts."""
    if not folder.is_dir():
        raise ScoreInputError(f"{folder}: no such folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ScoreInputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    keys = [p.relative_to(folder).as_posix() for p in files]
    prompts = folder_prompts(folder, keys, prompts_file, prompt, needs_prompts)
    return [Item(key, text, path.read_bytes) for key, text, path in zip(keys, prompts, files)]


def folder_prompts(folder: Path, keys: list[str], prompts_file: Path | None, prompt: str | None,
                   needs_prompts: bool, noun: str = "image") -> list[str]:
    """One prompt per key: ``prompt`` for all, else from ``prompts_file`` or the folder's
    ``metadata.jsonl``, else empty strings for prompt-free rewards."""
    if prompt is not None:
        return [prompt] * len(keys)
    if prompts_file is not None or (folder / "metadata.jsonl").is_file():
        return match_prompts(keys, prompts_file or folder / "metadata.jsonl", noun)
    if needs_prompts:
        raise ScoreInputError(f"{folder}: give --prompts FILE or --prompt TEXT (or put a metadata.jsonl in the folder)")
    return [""] * len(keys)


def video_folder_items(folder: Path, prompts_file: Path | None = None, prompt: str | None = None,
                       needs_prompts: bool = True) -> list[Item]:
    """The videos under ``folder``, sorted by relative path: each video file, and each folder that
    directly holds frame images (keyed by the folder's relative path)."""
    from diffalign.data.videos import FRAME_SUFFIXES, VIDEO_SUFFIXES

    if not folder.is_dir():
        raise ScoreInputError(f"{folder}: no such folder")
    files = [p for p in folder.rglob("*") if p.is_file()]
    videos = {p for p in files if p.suffix.lower() in VIDEO_SUFFIXES}
    frame_folders = {p.parent for p in files if p.suffix.lower() in FRAME_SUFFIXES}
    if folder in frame_folders:
        # One loose frame folder at the top would make the whole folder one video, hiding any other.
        raise ScoreInputError(
            f"{folder} holds images directly, but is read as videos (it holds video files, or --frames, --max-frames "
            "or a video reward was given): put each video's frames in a folder of their own under it, or pass "
            "that frame folder's parent as --images")
    sources = sorted(videos | frame_folders, key=lambda p: p.relative_to(folder).as_posix())
    if not sources:
        raise ScoreInputError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) or folders of frame images under {folder}")
    keys = [p.relative_to(folder).as_posix() for p in sources]
    prompts = folder_prompts(folder, keys, prompts_file, prompt, needs_prompts, noun="video")
    return [Item(key, text, lambda path=path: path, media="video") for key, text, path in zip(keys, prompts, sources)]


def holds_videos(folder: Path) -> bool:
    """True when a video file lies anywhere under ``folder``."""
    from diffalign.data.videos import VIDEO_SUFFIXES

    return folder.is_dir() and any(p.suffix.lower() in VIDEO_SUFFIXES and p.is_file() for p in folder.rglob("*"))


def match_prompts(keys: list[str], path: Path, noun: str = "image") -> list[str]:
    """One prompt per key (an image's or a video's) from a ``.txt``, ``.json`` or ``.jsonl`` prompts file."""
    if path.suffix == ".txt":
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        if len(lines) != len(keys):
            raise ScoreInputError(
                f"{path} has {len(lines)} prompts for {len(keys)} {noun}s (one line per {noun}, in sorted file order)")
        return lines
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    elif path.suffix == ".json":
        records = json.loads(path.read_text())
    else:
        raise ScoreInputError(f"{path}: prompts must be a .txt, .json or .jsonl file")
    if isinstance(records, dict):
        by_file = records
    else:
        by_file = {_field(r, _FILE_KEYS, path): _field(r, _PROMPT_KEYS, path) for r in records}
    missing = [k for k in keys if k not in by_file and Path(k).name not in by_file]
    if missing:
        raise ScoreInputError(f"{path} has no prompt for {len(missing)} {noun}(s), e.g. {missing[:3]}")
    present = set(keys) | {Path(k).name for k in keys}
    absent = [name for name in by_file if name not in present]
    if absent:  # a prompts file for other files, or files that went missing: scoring the rest would hide it
        raise ScoreInputError(f"{path} names {len(absent)} {noun}(s) that are not in the folder, e.g. {absent[:3]}; "
                              f"score the folder they are in, or remove them from {path.name}")
    return [by_file.get(k, by_file.get(Path(k).name)) for k in keys]


def _field(record: dict, names: tuple[str, ...], path: Path) -> str:
    for name in names:
        if name in record:
            return record[name]
    raise ScoreInputError(f"{path}: a record lacks all of {list(names)}: {record}")


def dataset_items(folder: Path) -> list[Item]:
    """Every image (or video, for ``"media": "video"``) of a preference dataset, keyed
    ``<row id>/<k>``, with its caption or prompt."""
    from diffalign.data import PreferenceDataset
    from diffalign.rewards.into_dataset import own_texts

    dataset = PreferenceDataset.open(folder)
    # A video's reader takes bytes or a path (a file or a frame folder), so videos are not read here.
    read = dataset.media_source if dataset.media == "video" else dataset.image_bytes
    items = []
    for row in dataset:
        for k, (image, caption) in enumerate(zip(row["images"], own_texts(row))):
            items.append(Item(f"{row['id']}/{k}", caption, lambda image=image: read(image), media=dataset.media))
    return items


@dataclass(frozen=True)
class Reader:
    """How samples of one media are read: ``load`` an item's sample, the errors that mean an
    unreadable one (skipped), those that must stop the run, and how many images a sample puts
    into a reward call (what ``--batch-size`` counts)."""

    media: str
    load: Callable[[Item], object]
    unreadable: tuple[type[BaseException], ...]
    fatal: tuple[type[BaseException], ...] = ()
    size: Callable[[object], int] = lambda sample: 1


def image_reader() -> Reader:
    """PIL images decoded from the items' bytes."""
    from diffalign.data.images import IMAGE_ERRORS, decode
    from diffalign.data.schema import UnsafeImagePathError

    return Reader("image", lambda item: decode(item.read()), (UnsafeImagePathError, *IMAGE_ERRORS))


def video_reader(rewards: list, max_frames: int | None = None) -> Reader:
    """uint8 ``[F, 3, H, W]`` videos from :func:`~diffalign.data.videos.read_frames` (the first
    ``max_frames``); a missing PyAV stops the run, since it would fail every video the same way."""
    from diffalign.data import videos

    def size(frames) -> int:  # the most frames any reward scores of this video
        return max(len(r.frame_indices(len(frames))) if hasattr(r, "frame_indices") else len(frames) for r in rewards)

    return Reader("video", lambda item: read_at_most(item.read(), max_frames), unreadable_video_errors(),
                  fatal=(videos.MissingVideoExtraError,), size=size)


def read_at_most(source, max_frames: int | None):
    """uint8 ``[F, 3, H, W]``: the first ``max_frames`` frames of a video, or all of a shorter one
    (``read_frames`` refuses a video shorter than the count asked for; ``--max-frames`` is a cap)."""
    from diffalign.data.videos import UnreadableVideoError, read_frames

    if max_frames is None:
        return read_frames(source)
    try:
        return read_frames(source, frames=max_frames)  # stops decoding after max_frames
    except UnreadableVideoError:
        return read_frames(source)  # shorter than the cap (or broken: then this raises too)


def unreadable_video_errors() -> tuple[type[BaseException], ...]:
    """What reading a broken video (or a dataset path out of its folder) raises."""
    from diffalign.data import videos
    from diffalign.data.schema import UnsafeImagePathError

    return (UnsafeImagePathError, *videos.VIDEO_ERRORS)


def check_video_decoding(items: list[Item]) -> None:
    """Before any weights load: when a video file (not a frame folder) is to be decoded, PyAV must
    be installed (:class:`~diffalign.data.videos.MissingVideoExtraError` names the install)."""
    from diffalign.data.schema import UnsafeImagePathError
    from diffalign.data.videos import require_av

    for item in items:
        try:
            source = item.read()
        except UnsafeImagePathError:  # skipped and counted when scoring
            continue
        if not (isinstance(source, Path) and source.is_dir()):
            require_av()
            return
