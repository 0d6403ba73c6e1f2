"""Preference data: the on-disk format, builders' reusable parts, the group loader and the
latent cache.

- :mod:`.schema`: columns and the schema check; :mod:`.dataset`: :class:`PreferenceDataset`.
- :mod:`.writer`: resumable, atomic shard writing; :mod:`.sources`: streaming source readers.
- :mod:`.pick_a_pic`: the Pick-a-Pic v2 builder; :mod:`.synthetic`: synthetic ranked groups
  (RankDPO / Syn-Pic); :mod:`.dual_captions`: per-image captions (DCPO); :mod:`.filtering`:
  noisy-pair filtering (FiFA); :mod:`.experts`: expert images, one per row (K = 1, Diffusion-DRO);
  :mod:`.prompts`: the prompt-set reader.
- :mod:`.loader`: :class:`GroupDataset`, :func:`collate_groups` (a family's ``inputs`` turns a batch into
  latents and conditioning).
- :mod:`.cache`: :func:`build_cache`, :class:`LatentCache`.
"""

from diffalign.data.dataset import PreferenceDataset
from diffalign.data.loader import GroupDataset, collate_groups
from diffalign.data.schema import SchemaError

__all__ = ["GroupDataset", "PreferenceDataset", "SchemaError", "collate_groups"]
