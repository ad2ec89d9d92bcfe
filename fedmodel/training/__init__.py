"""Private local training and evaluation."""

from fedmodel.training.local_training import (
    LocalTrainingResult,
    TrainingSettings,
    evaluate,
    sample_rate_for,
    train_locally,
)

__all__ = [
    "LocalTrainingResult",
    "TrainingSettings",
    "evaluate",
    "sample_rate_for",
    "train_locally",
]
