"""The container every data source returns: a training split, an optional test split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import TensorDataset


@dataclass(frozen=True)
class DatasetSplits:
    """Train and (optional) test examples of one dataset, as tensors.

    ``x`` tensors are float32 of shape ``(N, *input_shape)``; ``y`` tensors int64 class
    ids in ``0 .. num_classes - 1``.
    """

    train: TensorDataset
    test: TensorDataset | None
    num_classes: int
    input_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.train) == 0:
            raise ValueError("the training split is empty")
        if self.num_classes < 2:
            raise ValueError(f"need at least 2 classes, got {self.num_classes}")

    @property
    def train_labels(self) -> np.ndarray:
        return self.train.tensors[1].numpy()

    def train_subset(self, indices: np.ndarray) -> TensorDataset:
        """The training examples at ``indices`` (copied: the client owns them)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return TensorDataset(*(t[index].clone() for t in self.train.tensors))


def tensor_dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    """Float32 features and int64 labels as a ``TensorDataset``."""
    return TensorDataset(
        torch.as_tensor(np.asarray(x, dtype=np.float32)),
        torch.as_tensor(np.asarray(y, dtype=np.int64)),
    )
