"""The toy world: ground truth for alignment on a CPU.

- :mod:`.world`: 32×32 coloured shapes and the prompts "a <colour> <shape>".
- :mod:`.reward`: the programmatic reward (coverage of the prompt's colour) and prompt following.
- :mod:`.pretrain`: a tiny SD1.5-style base model trained on the world, cached.
- :mod:`.benchmark`: preference data from the base model, alignment with each objective, report.
"""
