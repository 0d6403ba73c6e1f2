"""Dataset builders: each makes a preference dataset in :mod:`diffalign.data`'s on-disk format,
from raw sources, from generators scored by reward models, or from another preference dataset
(``diffalign build BUILDER``, ``datasets_builders/*.py``).

- :mod:`.pick_a_pic`: Pick-a-Pic v2 human pairs; :mod:`.video_pairs`: human video pairs, Pick-a-Pic
  style; :mod:`.human_pairs`: the loop both share.
- :mod:`.synthetic`: synthetic ranked groups (RankDPO / Syn-Pic), from :mod:`.generators`' seeded
  samples scored by :mod:`.scoring`; :mod:`.ranked_pairs`: pair datasets from ranked ones.
- :mod:`.dual_captions`: per-image captions (DCPO); :mod:`.filtering`: noisy-pair filtering (FiFA);
  :mod:`.experts`: expert images, one per row (K = 1, Diffusion-DRO).
- :mod:`.prompts`: prompt-only train/eval datasets (K = 0) for online RL, from prompt files, GenEval's
  generator or a dataset's prompts.

Builders read and write through :mod:`diffalign.data` (format, writer, source readers) and score
with :mod:`diffalign.rewards`; neither of those imports this package.
"""
