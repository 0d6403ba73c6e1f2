"""The on-disk preference dataset (docs/architecture.md, §3): columns, types and the schema check.

A dataset is a folder::

    my_prefs/
      manifest.json            builder, version, options, row counts, what was dropped and why
      README.md                a dataset card whose ``configs`` point ``datasets`` at data/
      data/shard-00000.parquet one row per group
      cache/<family>-<res>/    optional latent cache (diffalign.data.cache)

Read it with ``PreferenceDataset.open("my_prefs")``, ``datasets.load_dataset("my_prefs")`` or
``datasets.load_dataset("parquet", data_dir="my_prefs/data")``.

Why the shards sit in ``data/`` and not beside ``manifest.json`` (the first design put them together):
``load_dataset("parquet", data_dir=...)`` reads *every* non-hidden file under ``data_dir`` as
Parquet, so a manifest or a cache beside the shards makes it fail.

Video datasets (``"media": "video"`` in the manifest) keep the same columns: ``images`` then holds
each group's K videos (MP4 bytes, or a path to a video file or to a folder of frames). One column
name for both media keeps every reader, builder and ``datasets.load_dataset`` on one schema; the
manifest, not the column, says which media a dataset holds.

One row is one group: a prompt and ``K ≥ 1`` images ordered best first. ``K ≥ 2`` are preference
pairs or ranked groups; ``K = 1`` is an *expert* dataset, one image per row (Diffusion-DRO's data,
``diffalign build experts``), which the pair builders (filter, pairs) refuse.

A *prompt-only* dataset (``"kind": "prompts"`` and ``"group_size": 0`` in the manifest; ``diffalign
build prompts``) keeps the same columns with ``K = 0``: every row's ``images`` is empty and its
per-image columns null. It feeds online RL, which samples its own images from the prompts; ``meta``
may carry what a reward reads per prompt (GenEval's metadata). Only such a dataset may hold a row
without images: a preference builder that writes one is refused (:func:`check_row`).

| column     | type                              | meaning                                        |
|------------|-----------------------------------|------------------------------------------------|
| id         | string                            | stable row key, unique in the dataset          |
| prompt     | string                            | the prompt the images were made for            |
| images     | list<Image> (``{bytes, path}``)   | K images, best first; path relative to root    |
| scores     | list<float64> or null             | reward-model scores, one per image             |
| ranks      | list<int32> or null               | 0 = best; equal ranks mark a tie               |
| captions   | list<string> or null              | one caption per image (DCPO); null = prompt    |
| source     | string                            | which builder / source the row came from       |
| meta       | string (JSON object) or null      | anything else (user id, generator names, ...)  |
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath, PureWindowsPath

import pyarrow as pa

from diffalign.errors import DiffalignError

FORMAT = "diffalign-preference"
FORMAT_VERSION = 1
DATA_DIR = "data"
MANIFEST = "manifest.json"

PROMPTS_KIND = "prompts"
"""The manifest's ``kind`` of a prompt-only dataset (``K = 0``); a preference dataset has no ``kind``."""

REQUIRED = ("id", "prompt", "images", "source")
OPTIONAL = ("scores", "ranks", "captions", "meta")
PER_IMAGE = ("scores", "ranks", "captions")


class SchemaError(DiffalignError, ValueError):
    """A dataset or row that does not follow the preference format; names the column."""


class UnsafeImagePathError(SchemaError):
    """An image ``path`` that would reach outside its dataset folder: absolute, climbing with
    ``..``, or through a symbolic link that points out. Such a row is refused, never read."""


def check_image_path(path: str) -> PurePosixPath:
    """``path`` as a relative path that stays in the dataset folder by its spelling (no root, no
    drive, no ``..``), or :class:`UnsafeImagePathError`."""
    relative = PurePosixPath(str(path).replace("\\", "/"))
    if not str(path) or relative.is_absolute() or ".." in relative.parts or PureWindowsPath(str(path)).drive:
        raise UnsafeImagePathError(f"image path {path!r} is not inside the dataset folder; image paths must be "
                                   "relative to it, without '..' (or store the image's bytes instead)")
    return relative


def resolve_image_path(root: Path, path: str | None) -> Path:
    """The file an image ``path`` names inside the dataset folder ``root``, with links followed.

    Raises:
        UnsafeImagePathError: the path, or a link on the way, leads outside ``root``.
        SchemaError: the image has no path (and no bytes).
    """
    if path is None:
        raise SchemaError(f"an image in {root} has neither bytes nor a path")
    full = (root / check_image_path(path)).resolve()
    if not full.is_relative_to(root.resolve()):
        raise UnsafeImagePathError(f"image path {path!r} leads outside the dataset folder {root} (through a "
                                   "symbolic link); copy the file into the folder or store its bytes")
    return full


def features():
    """The ``datasets.Features`` of a shard (images decode to PIL in ``datasets``)."""
    import datasets

    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "prompt": datasets.Value("string"),
            "images": datasets.List(datasets.Image()),
            "scores": datasets.List(datasets.Value("float64")),
            "ranks": datasets.List(datasets.Value("int32")),
            "captions": datasets.List(datasets.Value("string")),
            "source": datasets.Value("string"),
            "meta": datasets.Value("string"),
        }
    )


def arrow_schema() -> pa.Schema:
    """The Arrow schema of a shard, carrying ``datasets``' feature metadata."""
    return features().arrow_schema


def _same_type(found: pa.DataType, expected: pa.DataType) -> bool:
    """Type equality that ignores list item names ("item" vs "element") and large/small variants."""
    if pa.types.is_list(expected) or pa.types.is_large_list(expected):
        return (pa.types.is_list(found) or pa.types.is_large_list(found)) and _same_type(
            found.value_type, expected.value_type
        )
    if pa.types.is_struct(expected):
        if not pa.types.is_struct(found):
            return False
        names = {found.field(i).name: found.field(i).type for i in range(found.num_fields)}
        return all(
            expected.field(i).name in names and _same_type(names[expected.field(i).name], expected.field(i).type)
            for i in range(expected.num_fields)
        )
    if pa.types.is_string(expected):
        return pa.types.is_string(found) or pa.types.is_large_string(found)
    if pa.types.is_binary(expected):
        return pa.types.is_binary(found) or pa.types.is_large_binary(found)
    return found == expected


def check_schema(schema: pa.Schema, where: str) -> None:
    """Raise :class:`SchemaError` naming every missing or mistyped column of ``schema``.

    Args:
        schema: a shard's Arrow schema.
        where: the file, for the message.
    """
    expected = arrow_schema()
    problems = []
    for name in REQUIRED + OPTIONAL:
        want = expected.field(name).type
        if name not in schema.names:
            if name in REQUIRED:
                problems.append(f"missing column {name!r} ({want})")
            continue
        got = schema.field(name).type
        if not _same_type(got, want):
            problems.append(f"column {name!r} is {got}, expected {want}")
    if problems:
        raise SchemaError(f"{where} is not a preference-dataset shard: " + "; ".join(problems))


def image_texts(prompt: str, captions: list[str] | None, k: int, per_image: bool) -> list[str]:
    """The text that conditions each of a row's ``k`` images: its own caption under ``per_image``
    (objectives that condition per image, DCPO), else the row's prompt for all of them.

    The one place that decides it: the training step asks here with its objective's
    ``needs_captions``; the latent cache asks for each row's captions and stores its prompt beside
    them, so a cached batch holds the embeddings of either answer and the family takes those of the
    texts the step got (:func:`~diffalign.families.conditioning.stored_texts`).
    """
    if not per_image:
        return [prompt] * k
    if captions is None:
        raise SchemaError("a caption per image was asked for, but the row has none; write them with "
                          "`diffalign build dual-captions`")
    return list(captions)


def is_prompt_dataset(manifest: dict) -> bool:
    """Whether a manifest is a prompt-only dataset's (``kind: prompts``, ``K = 0``).

    Raises:
        SchemaError: the manifest says one without the other (``kind`` and ``group_size`` disagree).
    """
    prompts, empty = manifest.get("kind") == PROMPTS_KIND, manifest.get("group_size") == 0
    if prompts != empty:
        raise SchemaError(f"a manifest with kind {manifest.get('kind')!r} and group_size {manifest.get('group_size')!r}: "
                          f"a prompt-only dataset has both kind {PROMPTS_KIND!r} and group_size 0, any other neither; "
                          "rebuild it with `diffalign build prompts`")
    return prompts


def check_row(row: dict, prompts_only: bool = False) -> None:
    """Check one row before it is written: K ≥ 1 images and per-image columns of length K, or
    under ``prompts_only`` (a prompt-only dataset) no images and no per-image columns."""
    k = len(row.get("images") or [])
    if prompts_only and k:
        raise SchemaError(f"row {row.get('id')!r}: a prompt-only dataset holds no images, got {k}")
    if not prompts_only and k < 1:
        raise SchemaError(f"row {row.get('id')!r}: a row needs at least 1 image, got none (only a prompt-only "
                          "dataset, `diffalign build prompts`, holds rows without images)")
    for name in PER_IMAGE:
        value = row.get(name)
        if value is not None and prompts_only:
            raise SchemaError(f"row {row.get('id')!r}: a prompt-only dataset has no {name!r} (no images); leave it null")
        if value is not None and len(value) != k:
            raise SchemaError(f"row {row.get('id')!r}: {name!r} has {len(value)} entries for {k} images")
    for name in REQUIRED:
        if row.get(name) is None:
            raise SchemaError(f"row {row.get('id')!r}: column {name!r} is missing")
    for image in row["images"]:
        if isinstance(image, dict) and image.get("bytes") is None and image.get("path") is not None:
            check_image_path(image["path"])


def parse_meta(text: str | None, row_id: str) -> dict | None:
    """A row's ``meta``: the JSON object it holds as a dict, or ``None`` for a null.

    Raises:
        SchemaError: the text is not JSON or not an object; names the row.
    """
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as err:
        raise SchemaError(f"row {row_id!r}: meta is not JSON ({err}); the format's meta column holds a JSON object "
                          "or null: rewrite that row's meta with json.dumps") from None
    if not isinstance(value, dict):
        raise SchemaError(f"row {row_id!r}: meta holds a JSON {type(value).__name__}, not an object; the format's meta "
                          "column holds a JSON object or null: wrap the value, e.g. {\"value\": ...}")
    return value


def dataset_card(manifest: dict) -> str:
    """README.md for a dataset folder: a ``configs`` header so ``load_dataset(folder)`` reads
    only ``data/``, then a human summary of the manifest."""
    counts = manifest.get("counts", {})
    media = manifest.get("media", "image")  # a video dataset's `images` column holds videos
    prompts = manifest.get("kind") == PROMPTS_KIND
    title = "Prompt-only dataset" if prompts else "Preference dataset"
    if prompts:
        rows_are = "Rows are prompts only, with no images (K = 0): prompt-only data for online RL, which samples its own."
    elif manifest.get("group_size") == 1:
        rows_are = f"Rows are expert {media}s, one per row with its prompt (K = 1)."
    else:
        rows_are = f"Rows are groups of {media}s, best first."
    lines = [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        f"    path: {DATA_DIR}/*.parquet",
        "---",
        f"# {title} ({manifest.get('builder', 'unknown builder')})",
        "",
        f"Format `{FORMAT}` v{FORMAT_VERSION}, written by diffalign. {rows_are}",
        "",
        f"- rows: {manifest.get('rows', 0)}",
    ]
    if manifest.get("group_size") is not None:
        lines.append(f"- images per row (K): {manifest['group_size']}")
    for reason, n in sorted(counts.get("dropped", {}).items()):
        lines.append(f"- dropped ({reason}): {n}")
    return "\n".join(lines) + "\n"
