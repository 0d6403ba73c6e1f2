"""Resumable, atomic writing of a preference dataset.

Every shard is written to a hidden temporary file and renamed into place, then the progress
file (also renamed into place) records it together with how far the source has been read and
the counts so far. A killed build therefore leaves only whole shards, and the next run with
the same options skips the source rows already consumed and goes on from the next shard: no
duplicate and no missing rows. A shard renamed in just before a kill, but not yet recorded, is
removed and written again from the same source rows.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from diffalign import stopping
from diffalign.arguments import COUNT
from diffalign.data.records import (
    CARD,
    PROGRESS,
    SHARD,
    TEMP,
    BuildError,
    build_record,
    check_output,
    clear_build,
)
from diffalign.data.schema import (
    DATA_DIR,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    PROMPTS_KIND,
    arrow_schema,
    check_row,
    dataset_card,
)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, value) -> None:
    atomic_write_bytes(path, json.dumps(value, indent=2, sort_keys=True).encode())


def add_writer_arguments(parser, shard_size: int = 1000, unit: str = "rows", progress: bool = True) -> None:
    """The output options every builder shares: ``--shard-size``, ``--overwrite``, ``--no-progress``."""
    parser.add_argument("--shard-size", type=COUNT, default=shard_size,
                        help=f"{unit} per Parquet shard, the unit of resumption (default: {shard_size})")
    parser.add_argument("--overwrite", action="store_true", help="delete what an earlier run of this command wrote in "
                        "--out and start again (files it did not write are kept)")
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")


class ShardWriter:
    """Buffers rows and writes ``data/shard-NNNNN.parquet`` files of ``shard_size`` rows.

    Usage, for a source read row by row::

        writer = ShardWriter(out, builder="pick-a-pic", options=opts)
        for position, raw in enumerate(source(start=writer.position), start=writer.position):
            ...                          # convert; writer.add(row) or writer.drop(reason)
            writer.advance(position + 1)
        manifest = writer.finish({...})

    Args:
        root: the dataset folder (created if needed).
        builder: name recorded in the manifest.
        options: the build's options; resuming with different ones is refused.
        shard_size: rows per shard.
        overwrite: delete what an earlier build of ``builder`` wrote in ``root`` and start again
            (:func:`clear_build`; nothing else is deleted, and no file another wrote is replaced).
        inputs: ``{option: path or paths}`` the build reads: ``root`` must not be, contain or lie
            inside any of them (:func:`check_output`).
        outputs: names the builder writes in ``root`` beside the dataset (a report, nested
            datasets), recorded so that ``overwrite`` removes them too.
        option: how the command names ``root`` in messages (``--out``, ``--into``).
        prompts_only: a prompt-only dataset: rows without images (``K = 0``), and the manifest says
            ``"kind": "prompts"``, ``"group_size": 0``; any other writer refuses a row without images.
    """

    def __init__(self, root: str | Path, *, builder: str, options: dict, shard_size: int = 1000, overwrite: bool = False,
                 inputs: dict | None = None, outputs: tuple[str, ...] = (), option: str = "--out",
                 prompts_only: bool = False):
        self.root = Path(root)
        self.prompts_only = prompts_only
        self.data = self.root / DATA_DIR
        self.builder = builder
        self.options = json.loads(json.dumps(options))  # what a JSON round trip gives, for comparison
        self.shard_size = shard_size
        self.outputs = list(outputs)
        check_output(self.root, builder, inputs or {}, option)
        if overwrite:
            clear_build(self.root, builder)
        self.data.mkdir(parents=True, exist_ok=True)
        self.shards: list[dict] = []
        self.position = 0
        self.counts: dict = {"read": 0, "kept": 0, "dropped": {}}
        self.buffer: list[dict] = []
        self._pending_position = 0
        self.complete = self._resume()
        if build_record(self.root) is None:
            self._record()  # before the first shard: whatever this build leaves from now on is its own

    # ----------------------------------------------------------------------------- resume
    def _resume(self) -> bool:
        manifest_path, progress_path = self.root / MANIFEST, self.root / PROGRESS
        if manifest_path.exists():
            manifest = json.loads(manifest_path.read_text())
            self._check_options(manifest.get("options"), "a finished build")
            self.shards, self.counts = manifest["shards"], manifest["counts"]
            return True
        if progress_path.exists():
            progress = json.loads(progress_path.read_text())
            self._check_options(progress["options"], "an interrupted build")
            self.shards, self.position, self.counts = progress["shards"], progress["position"], progress["counts"]
        self._pending_position = self.position
        recorded = {s["file"] for s in self.shards}
        strays = [p for p in self.data.iterdir() if f"{DATA_DIR}/{p.name}" not in recorded]
        foreign = [p.name for p in strays if not (SHARD.fullmatch(p.name) or TEMP.fullmatch(p.name))]
        if foreign:
            raise BuildError(f"{self.data} holds {', '.join(sorted(foreign)[:3])}, which this build did not write (every "
                             "file there is read as part of the dataset): move it out, then run the same command again")
        for stray in strays:
            stray.unlink()  # a temp file, or a shard renamed in just before a kill
        return False

    def _declared(self) -> dict:
        """The record's ``outputs`` entry (absent for builders that write only the dataset)."""
        return {"outputs": self.outputs} if self.outputs else {}

    def _check_options(self, found, what: str) -> None:
        if found != self.options:
            raise BuildError(
                f"{self.root} holds {what} with other options ({found}); this run asks for {self.options}. "
                "Pass --overwrite to start again, or choose another folder."
            )

    # ----------------------------------------------------------------------------- rows
    @property
    def kept(self) -> int:
        return self.counts["kept"]

    def add(self, row: dict) -> None:
        """Queue one group row (checked against the schema)."""
        check_row(row, prompts_only=self.prompts_only)
        self.buffer.append(row)
        self.counts["kept"] += 1

    def drop(self, reason: str) -> None:
        """Count one source row that was not kept, by reason."""
        dropped = self.counts["dropped"]
        dropped[reason] = dropped.get(reason, 0) + 1

    def advance(self, position: int) -> None:
        """Say that the source has been consumed up to ``position`` rows; flushes a full shard.

        After SIGTERM or SIGINT (inside :func:`diffalign.stopping.stop_requests`, as every
        ``diffalign build`` runs), the rows so far are written as a shard, the progress is
        recorded, and :class:`~diffalign.errors.Stopped` is raised: the same command continues
        from the next source row.
        """
        self._pending_position = position
        self.counts["read"] = position
        if len(self.buffer) >= self.shard_size or stopping.requested():
            self.flush()
        if stopping.requested():
            raise stopping.stopped(
                f"{self.kept} rows in {len(self.shards)} shards kept in {self.root} (source read up to row "
                f"{self.position}); run the same command again to continue"
            )

    def flush(self) -> None:
        """Write the buffered rows as the next shard and record the progress."""
        if not self.buffer:
            return
        name = f"shard-{len(self.shards):05d}.parquet"
        table = pa.Table.from_pylist(self.buffer, schema=arrow_schema())
        tmp = self.data / f".{name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, self.data / name)
        self.shards.append({"file": f"{DATA_DIR}/{name}", "rows": len(self.buffer)})
        self.buffer = []
        self.position = self._pending_position
        self._record()

    def _record(self) -> None:
        atomic_write_json(self.root / PROGRESS, {
            "builder": self.builder, "options": self.options, **self._declared(), "shards": self.shards,
            "position": self.position,
            "counts": copy.deepcopy(self.counts),
        })

    def committed_column(self, name: str):
        """Values of one column over the shards already written (e.g. prompts, to de-duplicate
        after a resume)."""
        for shard in self.shards:
            yield from pq.read_table(self.root / shard["file"], columns=[name]).column(name).to_pylist()

    def finish(self, extra: dict | None = None) -> dict:
        """Flush, then write ``manifest.json`` and the dataset card; returns the manifest."""
        if self.complete:
            return json.loads((self.root / MANIFEST).read_text())
        self.flush()
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "builder": self.builder,
            "options": self.options, **self._declared(), "rows": sum(s["rows"] for s in self.shards),
            "shards": self.shards, "counts": self.counts, **(extra or {}),
        }
        if self.prompts_only:  # set here, not by each builder: what makes K = 0 rows readable
            manifest.update(kind=PROMPTS_KIND, group_size=0)
        atomic_write_bytes(self.root / CARD, dataset_card(manifest).encode())
        atomic_write_json(self.root / MANIFEST, manifest)
        (self.root / PROGRESS).unlink(missing_ok=True)
        self.complete = True
        return manifest
