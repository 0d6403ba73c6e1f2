"""Preference data: the on-disk format, its readers and writer, the group loader and the latent
cache. The builders that make datasets in this format are :mod:`diffalign.builders`; nothing
here imports them, nor the reward models.

- :mod:`.schema`: columns and the schema check; :mod:`.records`: what a build wrote, by its record;
  :mod:`.dataset`: :class:`PreferenceDataset`.
- :mod:`.writer`: resumable, atomic shard writing; :mod:`.sources`: streaming source readers;
  :mod:`.prompts`: the prompt-set reader; :mod:`.images`, :mod:`.videos`: decoding and encoding media.
- :mod:`.loader`: :class:`GroupDataset`, :func:`collate_groups` (a family's ``inputs`` turns a batch into
  latents and conditioning).
- :mod:`.cache`: :func:`build_cache`, :class:`LatentCache`.
"""

from diffalign.data.dataset import PreferenceDataset
from diffalign.data.loader import GroupDataset, collate_groups
from diffalign.data.schema import SchemaError

__all__ = ["GroupDataset", "PreferenceDataset", "SchemaError", "collate_groups"]
