"""Content digests of weights: what a checkpoint *is*, whatever path it is found at.

``diffalign evaluate`` keys the images it reuses by these, so a LoRA retrained into the same
folder is never mistaken for the old one, and a moved checkpoint is still recognised.

A local file or folder is hashed in full (SHA-256 of every file's relative name and bytes). The
digest of each file is remembered in ``<cache>/digests.json`` by its path, size, modification
time and inode, so a multi-GB base model is read once, not at every evaluation (0.5 s for 512 MB
from the page cache here; a cold disk reads slower). A hub id is pinned to the commit its snapshot resolves to.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MEMO = "digests.json"


def digest(path_or_id: str | os.PathLike | None, revision: str | None = None, memo_dir: Path | None = None) -> str | None:
    """``"sha256:…"`` for a local file or folder, ``"hub:<id>@<commit>"`` for a hub id, ``None`` for ``None``."""
    if path_or_id is None:
        return None
    local = Path(path_or_id).expanduser()
    if not local.exists():
        return _hub_digest(str(path_or_id), revision)
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    memo = _Memo(memo_dir)
    total = hashlib.sha256()
    for file in files:
        name = file.name if local.is_file() else file.relative_to(local).as_posix()
        total.update(f"{name}\0{memo.file_digest(file)}\n".encode())
    memo.save()
    return f"sha256:{total.hexdigest()}"


def _hub_digest(repo: str, revision: str | None) -> str:
    from huggingface_hub import snapshot_download

    snapshot = snapshot_download(repo, revision=revision, allow_patterns=["*.json"])
    return f"hub:{repo}@{Path(snapshot).name}"


class _Memo:
    """File digests remembered by ``(size, mtime_ns, inode)``; a rewritten file gets a new entry."""

    def __init__(self, folder: Path | None):
        if folder is None:
            from diffalign.config import cache_root

            folder = cache_root()
        self.path = Path(folder) / MEMO
        try:
            self.entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.changed = False

    def file_digest(self, file: Path) -> str:
        stat = file.stat()
        key, stamp = str(file.resolve()), [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        known = self.entries.get(key)
        if known and known[:3] == stamp:
            return known[3]
        sha = hashlib.sha256()
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                sha.update(block)
        self.entries[key] = [*stamp, sha.hexdigest()]
        self.changed = True
        return sha.hexdigest()

    def save(self) -> None:
        if not self.changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{MEMO}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.entries))
            tmp.replace(self.path)
        except OSError:
            pass  # a read-only cache only costs hashing again next time
