"""Data sources, partitioning, and the one entry point a client uses to get its share."""

from __future__ import annotations

import functools

from torch.utils.data import TensorDataset

from fedmodel.config import RunConfig
from fedmodel.data import synthetic
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


def load_splits(config: RunConfig, *, num_clients: int | None = None) -> DatasetSplits:
    """The dataset ``config`` names, with its options; its test split is the server's.

    ``num_clients`` (the federation's size) is needed by the synthetic dataset only: its
    test set is held-out data of the federation's own clients.
    """
    if config.dataset == "synthetic":
        if num_clients is None:
            raise ValueError("the synthetic dataset's test set needs the number of clients")
        return synthetic.load_synthetic_splits(
            num_clients=num_clients,
            alpha=config.synthetic_alpha,
            beta=config.synthetic_beta,
            seed=config.seed,
        )
    return load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed)


def data_shape(config: RunConfig) -> tuple[tuple[int, ...], int]:
    """Shape of one example and number of classes of the dataset ``config`` names."""
    if config.dataset == "synthetic":
        return (synthetic.NUM_FEATURES,), synthetic.NUM_CLASSES
    splits = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed)
    return splits.input_shape, splits.num_classes


def partition_sizes(config: RunConfig, *, num_partitions: int) -> list[int]:
    """Number of training examples of every partition under ``config``."""
    if config.dataset == "synthetic":  # client k is generated alone, whatever the count
        return list(synthetic.client_sizes(num_partitions, seed=config.seed))
    return [len(p) for p in _partitions(config, num_partitions)]


def load_partition(config: RunConfig, *, partition_id: int, num_partitions: int) -> TensorDataset:
    """The training examples of client ``partition_id`` out of ``num_partitions``."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"partition-id {partition_id} is out of range for {num_partitions} partitions"
        )
    if config.dataset == "synthetic":
        return synthetic.client_data(
            partition_id,
            alpha=config.synthetic_alpha,
            beta=config.synthetic_beta,
            seed=config.seed,
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
    "data_shape",
    "load_dataset",
    "load_partition",
    "load_splits",
    "partition",
    "partition_sizes",
    "tensor_dataset",
]
