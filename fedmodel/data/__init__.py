"""Data sources, partitioning, and the one entry point a client uses to get its share.

What a dataset is and how its clients get their share is its registered
:class:`~fedmodel.data.datasets.DatasetSpec` (:data:`~fedmodel.data.datasets.DATASETS`).
Run-config ``features`` (:mod:`fedmodel.data.features`) transforms every example of a dataset
loaded whole, the server's test split included, before anyone trains on it.
"""

from __future__ import annotations

import functools

import numpy as np
from torch.utils.data import TensorDataset

from fedmodel.config import RunConfig
from fedmodel.data.datasets import DATASETS, DatasetSpec, load_dataset
from fedmodel.data.features import FeatureStore, feature_shape
from fedmodel.data.mnist import DownloadError
from fedmodel.data.partitioning import PARTITIONERS, partition
from fedmodel.data.splits import DatasetSplits, tensor_dataset


def load_splits(config: RunConfig, *, num_clients: int | None = None) -> DatasetSplits:
    """The dataset ``config`` names, with its options; its test split is the server's.

    ``num_clients`` (the federation's size) is needed by a dataset generated per client
    only: its test set is held-out data of the federation's own clients. With
    ``features`` every training example is featurized: use :func:`load_test_split` where
    only the test split is read.
    """
    clients = DATASETS.get(config.dataset).clients
    if clients is not None:
        return clients.held_out(config, _federation_size(config, num_clients))
    splits = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed)
    if config.features == "none":
        return splits
    store = _feature_store(config)
    return DatasetSplits(
        train=store.train_subset(np.arange(len(splits.train))),
        test=store.test(),
        num_classes=splits.num_classes,
        input_shape=store.input_shape,
    )


def load_test_split(config: RunConfig, *, num_clients: int | None = None) -> TensorDataset | None:
    """The server's test split of :func:`load_splits` (None where the dataset has none),
    without featurizing any training example."""
    clients = DATASETS.get(config.dataset).clients
    if clients is not None:
        return clients.held_out(config, _federation_size(config, num_clients)).test
    if config.features == "none":
        return load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed).test
    return _feature_store(config).test()


def _federation_size(config: RunConfig, num_clients: int | None) -> int:
    if num_clients is None:
        raise ValueError(f"the {config.dataset} dataset's test set needs the number of clients")
    return num_clients


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
    indices = _partitions(config, num_partitions)[partition_id]
    if config.features != "none":
        return _feature_store(config).train_subset(indices)
    splits = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed)
    return splits.train_subset(indices)


def _feature_store(config: RunConfig) -> FeatureStore:
    return _feature_store_of(config.dataset, config.data_dir, config.seed, config.features)


@functools.lru_cache(maxsize=2)
def _feature_store_of(name: str, data_dir: str, seed: int, features: str) -> FeatureStore:
    """One store per dataset and features in a process: the runs of a grid share it (the
    transform is a fixed function of one example, so a client's share is what it would
    compute itself)."""
    splits = load_dataset(name, data_dir=data_dir, seed=seed)
    return FeatureStore(features, train=splits.train, test=splits.test)


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
    "load_test_split",
    "partition",
    "partition_sizes",
    "tensor_dataset",
]
