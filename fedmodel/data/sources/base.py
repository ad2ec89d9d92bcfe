"""What every custom data source returns: validated, labelled examples and their shape."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from fedmodel.config import RunConfig


@dataclass(frozen=True)
class DataOptions:
    """How to read a source: the run-config keys that concern custom data.

    Parameters
    ----------
    x_key, y_key : str
        Array names of features and labels in a ``.npz``, or file stems (``x.npy``,
        ``y.npy``) in a NumPy folder.
    label_column : str
        The CSV column holding the labels; every other column is a feature.
    image_mode : str
        ``"L"`` (grayscale, 1 channel) or ``"RGB"`` (3 channels).
    image_size : tuple of int, optional
        ``(width, height)`` every image is resized to; ``None`` keeps the size, which
        must then be the same for all images.
    num_classes : int
        The number of classes C; labels must lie in ``0 .. C - 1``. 0 infers C from the
        data (the number of class folders, or the largest label + 1).
    """

    x_key: str = "x"
    y_key: str = "y"
    label_column: str = "label"
    image_mode: str = "L"
    image_size: tuple[int, int] | None = None
    num_classes: int = 0

    @classmethod
    def from_config(cls, config: RunConfig) -> DataOptions:
        return cls(
            x_key=config.x_key,
            y_key=config.y_key,
            label_column=config.label_column,
            image_mode=config.image_mode,
            image_size=config.image_size_pixels,
            num_classes=config.num_classes,
        )


@dataclass(frozen=True)
class LabelledData:
    """A map-style dataset of ``(x float32 tensor, y int64 tensor)`` and its labels.

    ``labels`` holds every label in memory (8 bytes an example) so that partitioners and
    checks never have to read the features.
    """

    dataset: Dataset
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> LabelledData:
        """The examples at ``indices``: copied when in memory, a view when read from disk."""
        indices = np.asarray(indices, dtype=np.int64)
        if isinstance(self.dataset, TensorDataset):
            index = torch.as_tensor(indices)
            dataset: Dataset = TensorDataset(*(t[index] for t in self.dataset.tensors))  # copies
        else:
            dataset = Subset(self.dataset, indices.tolist())
        return LabelledData(dataset=dataset, labels=self.labels[indices])


@dataclass(frozen=True)
class SourceData:
    """One data source, loaded and validated.

    ``input_shape`` is the shape of one example; ``num_classes`` is the configured
    class count, else the number of class folders, else the largest label + 1 (a
    client may hold only some classes: the federation's count is agreed before round
    1). ``class_names`` are the folder names of an image folder (their sorted order
    gives the class ids), empty otherwise. ``test`` is the source's own test split
    (a Python loader's ``(train, test)`` pair), if it has one.
    """

    train: LabelledData
    test: LabelledData | None
    input_shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...]
    origin: str
