"""Every registered dataset gives each client its share; its properties say how."""

import numpy as np
import pytest

from fedmodel.config import RunConfig
from fedmodel.data import (
    DATASETS,
    data_shape,
    load_dataset,
    load_partition,
    load_splits,
    partition_sizes,
)
from fedmodel.data.mnist import archive_path


def test_the_registered_datasets_and_their_kinds():
    kinds = {
        name: (DATASETS.get(name).partitioned, DATASETS.get(name).own_data) for name in DATASETS
    }
    assert kinds == {
        "digits": (True, False),
        "mnist": (True, False),
        "fashion-mnist": (True, False),
        "custom": (True, True),  # one shared data-path is split by the partitioner
        "synthetic": (False, False),
    }


@pytest.fixture
def data_dir(tmp_path):
    """Small stand-ins for the MNIST archives (no download)."""
    rng = np.random.default_rng(0)
    for name in ("mnist", "fashion-mnist"):
        np.savez(
            archive_path(name, tmp_path),
            x_train=rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
            y_train=np.arange(30) % 10,
            x_test=rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
            y_test=np.arange(10),
        )
    return str(tmp_path)


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_serves_the_server_and_each_client(name, data_dir):
    spec = DATASETS.get(name)
    config = RunConfig(dataset=name, data_dir=data_dir, num_classes=10)
    if spec.own_data:  # served by fedmodel.data.sources instead
        with pytest.raises(ValueError, match=f"'{name}' cannot be loaded whole: its clients"):
            load_splits(config)
        return
    splits = load_splits(config, num_clients=3)
    shape, classes = data_shape(config)
    assert (shape, classes) == (splits.input_shape, splits.num_classes)
    sizes = partition_sizes(config, num_partitions=3)
    for client in range(3):
        share = load_partition(config, partition_id=client, num_partitions=3)
        assert len(share) == sizes[client] > 0
        assert tuple(share.tensors[0].shape[1:]) == shape
    if spec.partitioned:
        assert sum(sizes) == len(splits.train)


def test_a_dataset_generated_per_client_needs_the_federation_size_for_its_test_set():
    with pytest.raises(ValueError, match="the synthetic dataset's test set needs the number"):
        load_splits(RunConfig(dataset="synthetic"))
    with pytest.raises(ValueError, match="'synthetic' cannot be loaded whole: it is generated"):
        load_dataset("synthetic")


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(
        ValueError,
        match="unknown dataset 'cifar': must be one of digits, mnist, fashion-mnist, custom, "
        "synthetic",
    ):
        load_dataset("cifar")
