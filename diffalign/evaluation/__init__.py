"""Evaluation of checkpoints (``diffalign evaluate``).

- :mod:`~diffalign.evaluation.stats`: paired bootstrap statistics (mean, gain, win-rate);
- :mod:`~diffalign.evaluation.geneval`: GenEval's prompt generator, rule engine and scores, with a
  pluggable detector and colour classifier;
- :mod:`~diffalign.evaluation.generate`: resumable generation in GenEval's folder layout;
- :mod:`~diffalign.evaluation.compare`: reward scores, win-rate and pick probability, base vs candidate;
- :mod:`~diffalign.evaluation.report`: the self-contained ``report.html``;
- :mod:`~diffalign.evaluation.evaluate`: the command.
"""

from diffalign.evaluation.stats import Interval, bootstrap_mean, paired_gain, win_rate

__all__ = ["Interval", "bootstrap_mean", "paired_gain", "win_rate"]
