"""Data sources, partitioning, and the one entry point a client uses to get its share.

What a dataset is and how its clients get their share is its registered
:class:`~fedmodel.data.datasets.DatasetSpec` (:data:`~fedmodel.data.datasets.DATASETS`).
Run-config ``features`` (:mod:`fedmodel.data.features`) transforms every example of a dataset
loaded whole, the server's test split included, before anyone trains on it.
"""

from __future__ import annotations

import functools

from torch.utils.data import TensorDataset

from fedmodel.config import RunConfig
from fedmodel.data.datasets import DATASETS, DatasetSpec, load_dataset
from fedmodel.data.features import extract_features, feature_shape
from fedmodel.data.mnist import DownloadError
from fedmodel.data.partitioning import PARTITIONERS, partition
from fedmodel.data.splits import DatasetSplits, tensor_dataset


def load_splits(config: RunConfig, *, num_clients: int | None = None) -> DatasetSplits:
    """The dataset ``config`` names, with its options; its test split is the server's.

    ``num_clients`` (the federation's size) is needed by a dataset generated per client
    only: its test set is held-out data of the federation's own clients.
    """
    clients = DATASETS.get(config.dataset).clients
    if clients is not None:
        if num_clients is None:
            raise ValueError(f"the {config.dataset} dataset's test set needs the number of clients")
        return clients.held_out(config, num_clients)
    return _whole_dataset(config)


def data_shape(config: RunConfig) -> tuple[tuple[int, ...], int]:
    """Shape of one example and number of classes of the dataset ``config`` names."""
    clients = DATASETS.get(config.dataset).clients
    if clients is not None:
        return clients.input_shape, clients.num_classes
    splits = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed)
    return feature_shape(config.features, splits.input_shape), splits.num_classes


def partition_sizes(config: RunConfig, *, num_partitions: int) -> list[int]:
    """Number of training examples of every partition under ``config``."""
    clients = DATASETS.get(config.dataset).clients
    if clients is not None:  # client k is generated alone, whatever the count
        return list(clients.sizes(config, num_partitions))
    return [len(p) for p in _partitions(config, num_partitions)]


def load_partition(config: RunConfig, *, partition_id: int, num_partitions: int) -> TensorDataset:
    """The training examples of client ``partition_id`` out of ``num_partitions``."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"partition-id {partition_id} is out of range for {num_partitions} partitions"
        )
    clients = DATASETS.get(config.dataset).clients
    if clients is not None:
        return clients.data(config, partition_id)
    splits = _whole_dataset(config)
    return splits.train_subset(_partitions(config, num_partitions)[partition_id])


def _whole_dataset(config: RunConfig) -> DatasetSplits:
    if config.features == "none":
        return load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed)
    return _featurized(config.dataset, config.data_dir, config.seed, config.features)


@functools.lru_cache(maxsize=2)
def _featurized(name: str, data_dir: str, seed: int, features: str) -> DatasetSplits:
    """A dataset loaded whole, every example through ``features`` once per process (the
    transform is per example: each client's share is what it would compute itself)."""
    splits = load_dataset(name, data_dir=data_dir, seed=seed)
    return DatasetSplits(
        train=_featurized_split(features, splits.train),
        test=None if splits.test is None else _featurized_split(features, splits.test),
        num_classes=splits.num_classes,
        input_shape=feature_shape(features, splits.input_shape),
    )


def _featurized_split(features: str, split: TensorDataset) -> TensorDataset:
    x, y = split.tensors
    return TensorDataset(extract_features(features, x), y)


@functools.lru_cache(maxsize=8)
def _partitions(config: RunConfig, num_partitions: int) -> list:
    splits = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed)
    return partition(
        splits.train_labels,
        partitioner=config.partitioner,
        num_partitions=num_partitions,
        seed=config.seed,
        dirichlet_alpha=config.dirichlet_alpha,
        shards_per_client=config.shards_per_client,
    )


__all__ = [
    "DATASETS",
    "PARTITIONERS",
    "DatasetSpec",
    "DatasetSplits",
    "DownloadError",
    "data_shape",
    "load_dataset",
    "load_partition",
    "load_splits",
    "partition",
    "partition_sizes",
    "tensor_dataset",
]
