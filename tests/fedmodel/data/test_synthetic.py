"""Synthetic(alpha, beta): deterministic, per client, power-law sizes, learnable."""

import numpy as np
import pytest
import torch

from fedmodel.config import ConfigError, RunConfig
from fedmodel.data import load_partition, load_splits, partition_sizes
from fedmodel.data.synthetic import client_data, client_size, client_sizes
from fedmodel.models import build_model
from fedmodel.training import TrainingSettings, evaluate, train_locally


def test_a_client_is_the_same_whatever_the_federation_size_and_differs_by_seed():
    small = load_partition(RunConfig(dataset="synthetic"), partition_id=3, num_partitions=5)
    large = load_partition(RunConfig(dataset="synthetic"), partition_id=3, num_partitions=10_000)
    other_seed = load_partition(
        RunConfig(dataset="synthetic", seed=1), partition_id=3, num_partitions=5
    )
    assert all(torch.equal(a, b) for a, b in zip(small.tensors, large.tensors, strict=True))
    assert not torch.equal(small.tensors[0][:50], other_seed.tensors[0][:50])
    x, y = small.tensors
    assert x.dtype == torch.float32 and x.shape == (client_size(3, seed=0), 60)
    assert y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) < 10


def test_sizes_follow_the_lognormal_law_of_the_reference_generator():
    sizes = np.array(client_sizes(10_000, seed=0))
    assert sizes.min() >= 50
    # floor(lognormal(4, 2)) + 50: median e^4 + 50 ~ 105, a heavy tail of large clients.
    assert 95 <= np.median(sizes) <= 115
    assert np.mean(np.log(sizes - 49.5)) == pytest.approx(4.0, abs=0.1)
    assert sizes.max() > 10_000
    assert list(sizes[:3]) == [len(load_partition(RunConfig(dataset="synthetic"), partition_id=k,
                                                  num_partitions=3)) for k in range(3)]
    assert partition_sizes(RunConfig(dataset="synthetic"), num_partitions=7) == list(sizes[:7])


def test_alpha_and_beta_control_heterogeneity_between_clients():
    """With alpha = beta = 0 clients share input and model priors; large values spread them."""
    def spread(alpha, beta):
        clients = [client_data(k, alpha=alpha, beta=beta, seed=0) for k in range(40)]
        return float(torch.stack([c.tensors[0].mean(0) for c in clients]).mean(1).std())

    assert spread(0.0, 0.0) < 0.5 < spread(0.0, 5.0)


def test_central_test_set_is_held_out_data_of_the_federations_clients():
    config = RunConfig(dataset="synthetic")
    splits = load_splits(config, num_clients=5)
    assert splits.input_shape == (60,) and splits.num_classes == 10
    assert len(splits.test) == len(splits.train) == 10_000
    assert not torch.equal(splits.test.tensors[0], splits.train.tensors[0])
    large = load_splits(config, num_clients=10_000)  # 1,000 clients, 10 examples each
    assert len(large.test) == 10_000
    with pytest.raises(ValueError, match="needs the number of clients"):
        load_splits(config)
    # A model trained centrally on the clients' data does well on their held-out data.
    union = [load_partition(config, partition_id=k, num_partitions=5) for k in range(5)]
    data = torch.utils.data.TensorDataset(
        torch.cat([d.tensors[0] for d in union]), torch.cat([d.tensors[1] for d in union])
    )
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=(60,), num_classes=10, hidden_sizes=(64,))
    _, before = evaluate(model, splits.test)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: one thread is fastest, and immune to load
    try:
        train_locally(
            model,
            data,
            settings=TrainingSettings(epochs=5, batch_size=32, learning_rate=0.1, dp=False),
            ledger=None,
            seed=0,
        )
    finally:
        torch.set_num_threads(threads)
    _, after = evaluate(model, splits.test)
    assert before < 0.3 and after > 0.75


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"synthetic-alpha": -1.0}, "'synthetic-alpha' = -1.0 is out of range: must be >= 0"),
        ({"partitioner": "shards"}, "'partitioner' = 'shards' is out of range: must be 'iid'"),
    ],
)
def test_bad_synthetic_settings_fail_with_named_errors(values, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_mapping({"dataset": "synthetic", **values})
