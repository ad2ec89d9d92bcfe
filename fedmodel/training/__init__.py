"""Private local training and evaluation."""

# The sampler's rate and step count (defined with the privacy accounting they feed).
from fedmodel.privacy.sampling_plan import sample_rate_for, steps_per_epoch_for
from fedmodel.training.local_training import (
    LocalTrainingResult,
    TrainingSettings,
    evaluate,
    train_locally,
)

__all__ = [
    "LocalTrainingResult",
    "TrainingSettings",
    "evaluate",
    "sample_rate_for",
    "steps_per_epoch_for",
    "train_locally",
]
