"""Private local training and evaluation."""

from fedmodel.training.local_training import (
    LocalTrainingResult,
    TrainingSettings,
    evaluate,
    train_locally,
)
from fedmodel.training.poisson_sampling import sample_rate_for, steps_per_epoch_for

__all__ = [
    "LocalTrainingResult",
    "TrainingSettings",
    "evaluate",
    "sample_rate_for",
    "steps_per_epoch_for",
    "train_locally",
]
