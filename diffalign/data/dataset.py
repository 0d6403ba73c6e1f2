"""Reading a preference dataset folder (see :mod:`diffalign.data.schema`)."""

from __future__ import annotations

import bisect
import json
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from diffalign.data.schema import (
    DATA_DIR,
    FORMAT,
    MANIFEST,
    SchemaError,
    check_schema,
    is_prompt_dataset,
    resolve_image_path,
)


class PreferenceDataset:
    """Random access to the rows of a preference dataset.

    Opening checks the manifest and every shard's schema, and fails with a message that names
    the file and the missing or mistyped column. Shards are memory-mapped and read on demand.

    Attributes:
        root: the dataset folder.
        manifest: ``manifest.json`` as a dict.
        group_size: ``K``, the number of images per group (the same for every row); 0 for a
            prompt-only dataset.
        prompts_only: a prompt-only dataset (the manifest's ``"kind": "prompts"``): rows without
            images, for online RL.
    """

    def __init__(self, root: Path, manifest: dict, shards: list[Path], sizes: list[int]):
        self.root = root
        self.manifest = manifest
        self.shards = shards
        self._starts = [0]
        for size in sizes:
            self._starts.append(self._starts[-1] + size)
        self.prompts_only: bool = is_prompt_dataset(manifest)
        self.group_size: int = manifest.get("group_size", 2)
        self.media: str = manifest.get("media", "image")
        """``"image"`` or ``"video"`` (the manifest's ``media``): what the ``images`` column holds."""

    @classmethod
    def open(cls, root: str | Path) -> PreferenceDataset:
        """Open a finished dataset folder.

        Raises:
            SchemaError: no manifest (an unfinished build), a foreign format, or a bad shard.
        """
        root = Path(root)
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            hint = " (an interrupted build: run the builder again to finish it)" if (root / ".progress.json").exists() else ""
            raise SchemaError(f"{root} is not a preference dataset: no {MANIFEST}{hint}")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != FORMAT:
            raise SchemaError(f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
        try:
            is_prompt_dataset(manifest)
        except SchemaError as err:
            raise SchemaError(f"{manifest_path}: {err}") from None
        shards = [root / s["file"] for s in manifest["shards"]] or sorted((root / DATA_DIR).glob("*.parquet"))
        sizes = []
        for shard in shards:
            if not shard.is_file():
                raise SchemaError(f"{manifest_path} lists {shard}, which does not exist")
            try:
                meta = pq.ParquetFile(shard)
            except (pa.ArrowInvalid, OSError) as err:
                raise SchemaError(f"{shard} is not a readable Parquet file ({err}): the dataset is damaged; "
                                  "build it again") from err
            check_schema(meta.schema_arrow, str(shard))
            sizes.append(meta.metadata.num_rows)
        return cls(root, manifest, shards, sizes)

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, index: int) -> dict:
        """Row ``index`` as a dict; images are ``{"bytes", "path"}`` structs, as stored."""
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} of a dataset of {len(self)}")
        shard = bisect.bisect_right(self._starts, index) - 1
        return self._table(shard).slice(index - self._starts[shard], 1).to_pylist()[0]

    def __iter__(self):
        for shard in range(len(self.shards)):
            yield from self._table(shard).to_pylist()

    def column(self, name: str) -> list:
        """One column over all rows (cheap: only that column is read)."""
        out = []
        for shard in self.shards:
            out += pq.read_table(shard, columns=[name]).column(name).to_pylist()
        return out

    def image_bytes(self, image: dict) -> bytes:
        """The bytes of a stored image, reading ``path`` (relative to the folder) when needed.

        Raises:
            UnsafeImagePathError: ``path`` leads outside the dataset folder (absolute, ``..``, or a
                link out); nothing outside is ever opened. Readers refuse the row (skipped and
                counted, or an error under ``strict``).
        """
        if image.get("bytes") is not None:
            return image["bytes"]
        return resolve_image_path(self.root, image.get("path")).read_bytes()

    def media_source(self, image: dict) -> bytes | Path:
        """What a video reader takes for a stored item: its bytes, or the file or frame folder its
        ``path`` names inside the dataset folder (checked as :meth:`image_bytes` checks)."""
        if image.get("bytes") is not None:
            return image["bytes"]
        return resolve_image_path(self.root, image.get("path"))

    @lru_cache(maxsize=4)
    def _table(self, shard: int):
        return pq.read_table(self.shards[shard], memory_map=True)
