"""The SPM authors' released checkpoints (RockeyCoss/SPO; hub repo :data:`AUTHORS_REPO`): which file
each release is, and the map between their state-dict keys and ours
(:class:`~diffalign.rewards.step_aware.StepAwarePreferenceModel` loads them through it).
"""

from __future__ import annotations

import os
import re
import warnings

from torch import Tensor

from diffalign.rewards.base import RewardLoadError

AUTHORS_REPO = "SPO-Diffusion-Models/Step-Aware_Preference_Models"


class _ReleasedFiles(dict):
    """A dict of the released files that still answers the keys it had before, with a warning."""

    def __missing__(self, key):
        if key not in _RENAMED:
            raise KeyError(key)
        return self[authors_release(key)]


AUTHORS_FILES = _ReleasedFiles({"v1-5": "sd-v1-5_step-aware_preference_model.bin",
                                "xl": "sdxl_step-aware_preference_model.bin"})
"""The released checkpoints (hub repo :data:`AUTHORS_REPO`), keyed by the release's name in its file
(``sd-v1-5_…`` → ``"v1-5"``, ``sdxl_…`` → ``"xl"``). Each was trained on the ``x̂0`` of one base
model, and an SPM only knows the ``x̂0`` of the base model it was trained with (RockeyCoss/SPO
issue #21)."""

# The keys AUTHORS_FILES had before (named after base models, which only diffalign.families names):
# still accepted, with a DeprecationWarning, until the release after 0.1.
_RENAMED = {"sd15": "v1-5", "sdxl": "xl"}


def authors_release(release: str, warn: bool = True) -> str:
    """``release`` as a key of :data:`AUTHORS_FILES`: a key is returned as it is, an old key (see
    ``_RENAMED``) as its new name, with a :class:`DeprecationWarning` naming it unless ``warn`` is
    off (for a caller that warns itself).

    Raises:
        ValueError: neither, naming the keys.
    """
    if release in AUTHORS_FILES.keys():
        return release
    if release in _RENAMED:
        new = _RENAMED[release]
        if warn:
                warnings.warn(f"the authors' checkpoint {release!r} is now called {new!r} (the release's name in its file "
                          f"{AUTHORS_FILES[new]}); {release!r} stops working in the next release",
                          DeprecationWarning, stacklevel=3)
        return new
    raise ValueError(f"release must be one of {', '.join(AUTHORS_FILES)}, got {release!r}")


# ----------------------------------------------------------------------------------- key map
_PARTS = {"p": r"(?P<p>weight|bias)", "i": r"(?P<i>\d+)",
          "clip": r"(?P<clip>(?:text_model|vision_model|visual_projection|text_projection)\..+|logit_scale)"}
AUTHORS_KEY_MAP = (
    ("model.t_embedder.mlp.0.{p}", "time.embedder.linear_1.{p}"),
    ("model.t_embedder.mlp.2.{p}", "time.embedder.linear_2.{p}"),
    ("model.vision_model.encoder.layers.{i}.adaLN_modulation.1.{p}", "time.layers.{i}.{p}"),
    ("model.vision_model.adaLN_modulation.1.{p}", "time.pooled.{p}"),
    ("model.{clip}", "clip.{clip}"),  # the rest of the backbone keeps its transformers name
)
"""``(authors' key, our key)`` templates, tried in order (the adaLN rows before the catch-all
CLIP row). The authors' names follow their ``HFTimeConditionedCLIPModel`` (``t_embedder.mlp``
= Linear, SiLU, Linear; ``adaLN_modulation`` = SiLU, Linear), held as ``.model``."""
AUTHORS_DROPPED = re.compile(r"model\.(text_model|vision_model)\.embeddings\.position_ids")
"""Buffers transformers 4.27 (the authors' version) saved and today's recomputes: dropped."""


def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for name, part in _PARTS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), part)
    return re.compile(pattern)


def _remap(state: dict[str, Tensor], rules, dropped: re.Pattern | None, source) -> dict[str, Tensor]:
    out, unknown = {}, []
    for key, value in state.items():
        if dropped is not None and dropped.fullmatch(key):
            continue
        for pattern, target in rules:
            found = pattern.fullmatch(key)
            if found:
                out[target.format(**found.groupdict())] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise RewardLoadError(f"StepAwarePreferenceModel: {source} holds keys the key map does not know: "
                              f"{sorted(unknown)[:8]}{' ...' if len(unknown) > 8 else ''} ({len(unknown)} in all)")
    return out


def authors_to_ours(state: dict[str, Tensor], source: str | os.PathLike = "the checkpoint") -> dict[str, Tensor]:
    """The authors' state dict → ours (:data:`AUTHORS_KEY_MAP`); unknown keys raise
    :class:`RewardLoadError` naming them."""
    rules = [(_compile(theirs), ours) for theirs, ours in AUTHORS_KEY_MAP]
    return _remap(state, rules, AUTHORS_DROPPED, source)


def ours_to_authors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict → the authors' names (the inverse of :func:`authors_to_ours`, without the
    dropped buffers), e.g. to give a model trained here to their SPO code."""
    rules = [(_compile(ours), theirs) for theirs, ours in AUTHORS_KEY_MAP]
    return _remap(state, rules, None, "the model")


__all__ = ["AUTHORS_DROPPED", "AUTHORS_FILES", "AUTHORS_KEY_MAP", "AUTHORS_REPO", "authors_release", "authors_to_ours",
           "ours_to_authors"]
