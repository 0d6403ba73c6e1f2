"""Evaluation of checkpoints (``diffalign evaluate``).

- :mod:`~diffalign.evaluation.stats`: paired bootstrap statistics (mean, gain, win-rate);
- :mod:`~diffalign.evaluation.geneval`: GenEval's scores of a folder of images, joining
  :mod:`~diffalign.evaluation.geneval_prompts` (its prompt generator and metadata),
  :mod:`~diffalign.evaluation.geneval_rules` (its rule engine and summary) and
  :mod:`~diffalign.evaluation.geneval_models` (the pluggable detector and colour classifiers);
- :mod:`~diffalign.evaluation.geneval_reward`: GenEval as an online-RL reward (Flow-GRPO's
  partial score; the ``geneval`` member of :mod:`diffalign.rewards.online`);
- :mod:`~diffalign.evaluation.generate`: resumable generation in GenEval's folder layout;
- :mod:`~diffalign.evaluation.compare`: reward scores, win-rate and pick probability, base vs candidate;
- :mod:`~diffalign.evaluation.report`: the self-contained ``report.html``;
- :mod:`~diffalign.evaluation.reward_hacking`: a proxy score rising while a true reward falls
  (a watch for training loops);
- :mod:`~diffalign.evaluation.evaluate`: the command.
"""

from diffalign.evaluation.stats import Interval, bootstrap_mean, paired_gain, win_rate

__all__ = ["Interval", "bootstrap_mean", "paired_gain", "win_rate"]
