"""Run-config ``features``: ScatterNet features (Tramèr & Boneh 2021) of every example."""

import pytest
import torch
from torch.utils.data import TensorDataset

from fedmodel.config import ConfigError, RunConfig
from fedmodel.data import data_shape, load_partition, load_splits, load_test_split
from fedmodel.data.features import (
    SCATTERING_GROUPS,
    FeatureStore,
    extract_features,
    feature_shape,
)
from simulations import simulate

pytest.importorskip("kymatio", reason="features = 'scattering' needs kymatio")


@pytest.mark.parametrize(
    ("input_shape", "expected"),
    [((1, 28, 28), (81, 7, 7)), ((1, 8, 8), (81, 2, 2)), ((3, 32, 32), (243, 8, 8))],
)
def test_scattering_gives_81_channels_per_input_channel_at_a_quarter_of_the_side(
    input_shape, expected
):
    assert feature_shape("scattering", input_shape) == expected
    x = torch.rand(3, *input_shape)
    assert tuple(extract_features("scattering", x).shape) == (3, *expected)


def test_an_examples_features_depend_on_that_example_only():
    # What makes the transform free under DP-SGD: no record reaches another's features.
    x = torch.rand(5, 1, 28, 28)
    together = extract_features("scattering", x)
    alone = torch.cat([extract_features("scattering", x[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    changed = x.clone()
    changed[0] = torch.rand(1, 28, 28)
    torch.testing.assert_close(extract_features("scattering", changed)[1:], together[1:])


def test_each_example_is_kymatios_scattering_group_normalized_without_learned_parameters():
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

    x = torch.rand(4, 1, 28, 28)
    raw = ScatteringTorch2D(J=2, shape=(28, 28), L=8)(x).reshape(4, SCATTERING_GROUPS, -1)
    mean = raw.mean(-1, keepdim=True)
    var = raw.var(-1, unbiased=False, keepdim=True)
    expected = ((raw - mean) / torch.sqrt(var + 1e-5)).reshape(4, 81, 7, 7)  # GroupNorm's eps
    torch.testing.assert_close(extract_features("scattering", x), expected, rtol=1e-4, atol=1e-4)


def test_none_leaves_the_examples_as_they_are():
    x = torch.rand(2, 1, 8, 8)
    assert extract_features("none", x) is x
    assert feature_shape("none", (64,)) == (64,)


def test_non_image_examples_are_refused_naming_the_shape():
    with pytest.raises(ConfigError, match=r"features.*shape \(64,\)"):
        feature_shape("scattering", (64,))


def test_a_clients_share_holds_the_features_of_its_own_examples():
    plain = RunConfig.from_mapping({"dataset": "digits"})
    featurized = RunConfig.from_mapping({"dataset": "digits", "features": "scattering"})
    share = load_partition(plain, partition_id=1, num_partitions=4)
    featurized_share = load_partition(featurized, partition_id=1, num_partitions=4)
    torch.testing.assert_close(
        featurized_share.tensors[0], extract_features("scattering", share.tensors[0])
    )
    assert torch.equal(featurized_share.tensors[1], share.tensors[1])
    splits = load_splits(featurized)
    assert splits.input_shape == (81, 2, 2) == data_shape(featurized)[0]
    assert tuple(splits.test.tensors[0].shape[1:]) == (81, 2, 2)  # the server's split too


def test_a_store_featurizes_only_the_examples_asked_for_each_once():
    x, y = torch.rand(10, 1, 8, 8), torch.arange(10)
    test = TensorDataset(torch.rand(3, 1, 8, 8), torch.arange(3))
    store = FeatureStore("scattering", train=TensorDataset(x, y), test=test)
    share = store.train_subset([7, 2, 2])
    assert store.num_computed == 2  # a node computes its own examples, no others
    torch.testing.assert_close(share.tensors[0], extract_features("scattering", x[[7, 2, 2]]))
    assert share.tensors[1].tolist() == [7, 2, 2]
    store.train_subset([2, 5])
    assert store.num_computed == 3
    assert store.test() is store.test()  # computed once
    assert store.num_computed == 3  # the test split featurizes no training example


def test_the_servers_test_split_is_featurized_like_the_clients_shares():
    config = RunConfig.from_mapping({"dataset": "digits", "features": "scattering", "seed": 7})
    test = load_test_split(config)
    assert torch.equal(test.tensors[0], load_splits(config).test.tensors[0])
    assert tuple(test.tensors[0].shape[1:]) == data_shape(config)[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"augmentation": "crop"}, r"'augmentation' = 'crop'.*features"),
        ({"dataset": "synthetic"}, r"'features' = 'scattering'.*loaded whole"),
        ({"features": "wavelets"}, r"'features' = 'wavelets' is not known"),
    ],
)
def test_features_that_cannot_apply_are_one_clear_config_error(extra, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_mapping({"features": "scattering", **extra})


def test_scattering_and_a_linear_model_train_under_dp(tmp_path):
    result = simulate(
        {
            "features": "scattering",
            "model": "linear",
            "num-server-rounds": 5,
            "target-epsilon": 3.0,
            "run-dir": str(tmp_path / "run"),
        },
        num_clients=3,
    )
    assert result.rounds[-1].epsilon_max <= 3.0 + 1e-6
    assert result.rounds[-1].test_accuracy >= 0.8
