"""Speed and memory benchmarks, each a ratio against a named baseline measured in the same run.

- :mod:`~diffalign.benchmarks.train_step`: one training step, naive per-paper loop vs the trainer.
  Its set-ups are in :mod:`~diffalign.benchmarks.train_step_setups`, its table in
  :mod:`~diffalign.benchmarks.train_step_table`.
- :mod:`~diffalign.benchmarks.peer_table` and :mod:`~diffalign.benchmarks.gpu_table`: the README's
  CPU peer tables and the GPU table of issue 37, each a plan of ``train_step`` runs.
- :mod:`~diffalign.benchmarks.generate`: images/s of dataset and evaluation generation vs a
  one-prompt-at-a-time pipeline loop.
- :mod:`~diffalign.benchmarks.score`: images/s per reward model.
- :mod:`~diffalign.benchmarks.logprob_spread`: how far a recomputed step log-probability strays
  from the sampler's in bf16 (the ratio online RL clips), per tiny family and noise rule.
- :mod:`~diffalign.benchmarks.measure`: timing, peak memory and the JSON/Markdown report they share.

The runnable entry points are ``benchmarks/*.py`` at the top of the repository (docs/architecture.md, §3).
"""
