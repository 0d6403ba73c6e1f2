"""Finding and reading reward-model files, with errors that say what was looked for where.

A ``path_or_id`` is a local file, a local folder, or a hub repository id. ``.pt``/``.pth``/
``.bin`` checkpoints are read with ``torch.load(weights_only=True)`` (tensors only, no pickled
code); no remote code is ever run.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from diffalign.rewards.base import RewardLoadError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
"""The files a transformers model folder holds its weights in (any one suffices)."""


def find_file(path_or_id: str | os.PathLike, filenames: Sequence[str], what: str, revision: str | None = None) -> Path:
    """The first of ``filenames`` found in a local folder or hub repo (or ``path_or_id`` itself
    when it is a file).

    Raises:
        RewardLoadError: naming every file tried and the folder or repo it was looked for in.
    """
    path = Path(path_or_id).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for name in filenames:
            if (path / name).is_file():
                return path / name
        raise RewardLoadError(f"{what}: found none of {list(filenames)} in the folder {path}")
    if path.suffix in (".pt", ".pth", ".bin", ".safetensors") or str(path_or_id).count("/") != 1:
        raise RewardLoadError(f"{what}: {path} is neither a file nor a folder (nor a hub id like org/name)")
    return _download(str(path_or_id), filenames, what, revision)


def _download(repo: str, filenames: Sequence[str], what: str, revision: str | None) -> Path:
    from huggingface_hub import constants, hf_hub_download

    errors = []
    for name in filenames:
        try:
            return Path(hf_hub_download(repo, name, revision=revision))
        except Exception as err:  # hub errors come in many types; the message matters
            errors.append(f"{name}: {type(err).__name__}")
    offline = " (HF_HUB_OFFLINE is set: only the cache was searched)" if constants.HF_HUB_OFFLINE else ""
    raise RewardLoadError(
        f"{what}: could not get {list(filenames)} from the hub repo {repo!r}{offline}; looked in the cache "
        f"{constants.HF_HUB_CACHE}. Download them there or pass a local folder. ({'; '.join(errors)})"
    )


def read_json(path_or_id: str | os.PathLike, filename: str, what: str, revision: str | None = None) -> dict:
    """A JSON file of a local folder or hub repo, as a dict."""
    return json.loads(find_file(path_or_id, [filename], what, revision).read_text())


def load_checkpoint(path: Path) -> dict[str, Tensor]:
    """A state dict from a ``.pt``/``.pth``/``.bin``/``.safetensors`` file.

    Unwraps a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper and the ``module.`` prefix
    that DistributedDataParallel adds.
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            # torch's message is a page of advice ending in the offending global; keep that part.
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
            what = f"it pickles {found.group(1)}" if found else f"{type(err).__name__}: {str(err).splitlines()[0]}"
            raise RewardLoadError(
                f"{path}: not a tensors-only checkpoint ({what}); diffalign never unpickles code. Convert it to "
                "safetensors where you trust its source, or use the published weights"
            ) from err
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise RewardLoadError(f"{path}: expected a state dict, found {type(state).__name__}")
    return {key.removeprefix("module."): value for key, value in state.items() if isinstance(value, Tensor)}


def check_model_folder(path_or_id: str | os.PathLike, what: str) -> None:
    """Fail early, naming the files, when a local transformers folder lacks its config or weights."""
    path = Path(path_or_id).expanduser()
    if not path.exists():
        if str(path_or_id).count("/") != 1:
            raise RewardLoadError(f"{what}: {path} is neither a folder nor a hub id like org/name")
        return  # a hub id: transformers resolves it (errors are wrapped by load_pretrained)
    missing = [] if (path / "config.json").is_file() else ["config.json"]
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES[:2]))
    if missing:
        raise RewardLoadError(f"{what}: the folder {path} lacks {', '.join(missing)}")


def load_pretrained(cls, path_or_id: str | os.PathLike, what: str, **kwargs):
    """``cls.from_pretrained`` of a transformers class, with the error naming what was looked for."""
    check_model_folder(path_or_id, what)
    try:
        return cls.from_pretrained(str(path_or_id), **kwargs)
    except OSError as err:
        from huggingface_hub import constants

        raise RewardLoadError(
            f"{what}: could not load {cls.__name__} weights (config.json + {' or '.join(WEIGHT_FILES[:2])}) "
            f"from {path_or_id} (hub cache {constants.HF_HUB_CACHE}): {err}"
        ) from err


def load_tokenizer(path_or_id: str | os.PathLike, what: str):
    """``AutoTokenizer.from_pretrained`` with the error naming where it was looked for."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path_or_id))
    except (OSError, ValueError) as err:
        raise RewardLoadError(f"{what}: could not load a tokenizer from {path_or_id}: {err}") from err


def has_tokenizer(path: str | os.PathLike) -> bool:
    """True when a local folder holds tokenizer files."""
    folder = Path(path).expanduser()
    return folder.is_dir() and any((folder / n).is_file() for n in ("tokenizer.json", "vocab.json", "vocab.txt"))


def assign_state(model: torch.nn.Module, state: dict[str, Tensor], what: str, source: Path | str,
                 dtype: torch.dtype | None = None) -> None:
    """Load a mapped state dict into ``model`` (possibly built with empty weights), requiring every
    key; floating tensors are cast to ``dtype`` first."""
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise RewardLoadError(
            f"{what}: {source} does not fit the architecture: missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"
        )
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:  # shape mismatches
        raise RewardLoadError(f"{what}: {source} does not fit the architecture: {err}") from err
