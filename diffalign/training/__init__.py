"""Training: the accelerate loop, checkpoints and resume, LoRA, optimisers, metrics.

Start with :func:`train` or the ``diffalign train`` command.
"""

from diffalign.training.trainer import Trainer, TrainingError, TrainResult, train

__all__ = ["TrainResult", "Trainer", "TrainingError", "train"]
