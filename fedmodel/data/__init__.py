"""Data sources, partitioning, and the one entry point a client uses to get its share."""

from __future__ import annotations

import functools

from torch.utils.data import TensorDataset

from fedmodel.config import RunConfig
from fedmodel.data.digits import load_digits_splits
from fedmodel.data.mnist import load_mnist_splits
from fedmodel.data.partitioning import partition
from fedmodel.data.splits import DatasetSplits, tensor_dataset


@functools.lru_cache(maxsize=4)
def load_dataset(name: str, *, data_dir: str = "", seed: int = 0) -> DatasetSplits:
    """Load a built-in dataset by name (cached: many clients in one process share it)."""
    if name == "digits":
        return load_digits_splits(seed=seed)
    if name in ("mnist", "fashion-mnist"):
        return load_mnist_splits(name, data_dir=data_dir)
    raise ValueError(f"unknown dataset {name!r}: must be one of digits, mnist, fashion-mnist")


def partition_sizes(config: RunConfig, *, num_partitions: int) -> list[int]:
    """Number of training examples of every partition under ``config``."""
    return [len(p) for p in _partitions(config, num_partitions)]


def load_partition(config: RunConfig, *, partition_id: int, num_partitions: int) -> TensorDataset:
    """The training examples of client ``partition_id`` out of ``num_partitions``."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"partition-id {partition_id} is out of range for {num_partitions} partitions"
        )
    splits = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed)
    return splits.train_subset(_partitions(config, num_partitions)[partition_id])


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
    "DatasetSplits",
    "load_dataset",
    "load_partition",
    "partition",
    "partition_sizes",
    "tensor_dataset",
]
