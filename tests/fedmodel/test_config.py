import tomllib
from pathlib import Path

import pytest

from fedmodel.config import ConfigError, RunConfig
from fedmodel.data import DATASETS, PARTITIONERS
from fedmodel.models import MODELS
from fedmodel.privacy.ledger import ACCOUNTANT_NAMES
from fedmodel.training.local_training import GRAD_SAMPLE_MODES

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_equal_pyproject_app_config():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["flwr"]["app"]["config"] == RunConfig().to_mapping()


def test_from_mapping_accepts_kebab_keys_and_ints_for_floats():
    config = RunConfig.from_mapping({"num-server-rounds": 3, "learning-rate": 1, "model": "cnn"})
    assert (config.num_server_rounds, config.learning_rate, config.model) == (3, 1, "cnn")
    assert config.hidden_layer_sizes == (64,)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("num-server-rounds", 0, "'num-server-rounds' = 0 is out of range: must be >= 1"),
        ("fraction-train", 0.0, "'fraction-train' = 0.0 is out of range: must be in (0, 1]"),
        ("fraction-train", 1.5, "must be in (0, 1]"),
        ("noise-multiplier", -1.0, "'noise-multiplier' = -1.0 is out of range: must be >= 0"),
        ("max-grad-norm", 0.0, "'max-grad-norm' = 0.0 is out of range: must be > 0"),
        ("delta", 1.0, "'delta' = 1.0 is out of range: must be in (0, 1)"),
        ("target-epsilon", -2.0, "'target-epsilon' = -2.0 is out of range"),
        ("model", "resnet", "'model' = 'resnet' is not known: must be one of 'mlp', 'cnn'"),
        ("dataset", "cifar", "'dataset' = 'cifar' is not known"),
        ("num-server-rounds", "3", "'num-server-rounds' = '3' has type str; expected int"),
        ("dp", 1, "'dp' = 1 has type int; expected bool"),
        ("learning-rate", float("nan"), "expected float (finite)"),
        ("hidden-sizes", "64,x", "'hidden-sizes' = '64,x' is out of range"),
    ],
)
def test_invalid_values_name_key_value_and_range(key, value, message):
    with pytest.raises(ConfigError) as error:
        RunConfig.from_mapping({key: value})
    assert message in str(error.value)


KNOWN_KEYS = ", ".join(sorted(RunConfig().to_mapping()))


def test_unknown_key_is_refused_with_the_known_keys():
    with pytest.raises(ConfigError) as error:
        RunConfig.from_mapping({"zzz": 3})
    assert str(error.value) == f"unknown run-config key 'zzz'; known keys: {KNOWN_KEYS}"


@pytest.mark.parametrize(
    ("key", "near"),
    [
        ("num-server-round", "num-server-rounds"),
        ("num-rounds", "num-server-rounds"),
        ("learning_rat", "learning-rate"),
    ],
)
def test_unknown_key_first_suggests_the_near_miss(key, near):
    with pytest.raises(ConfigError) as error:
        RunConfig.from_mapping({key: 3})
    assert str(error.value) == (
        f"unknown run-config key '{key}'; did you mean '{near}'? known keys: {KNOWN_KEYS}"
    )


@pytest.mark.parametrize(
    ("value", "text", "sizes"),
    [
        (64, "64", (64,)),
        ("64,64", "64,64", (64, 64)),
        ([64, 64], "64,64", (64, 64)),
        ([128, 64, 32], "128,64,32", (128, 64, 32)),
    ],
)
def test_hidden_sizes_accept_an_integer_a_string_or_a_list(value, text, sizes):
    config = RunConfig.from_mapping({"hidden-sizes": value})
    assert config.hidden_sizes == text and config.hidden_layer_sizes == sizes
    assert config.to_mapping()["hidden-sizes"] == text
    assert config.replace(seed=1).hidden_sizes == text


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "'hidden-sizes' = '0' is out of range"),
        ([64, -1], "'hidden-sizes' = '64,-1' is out of range"),
        ([64, "x"], "'hidden-sizes' = \"64,'x'\" is out of range"),
        ([], "'hidden-sizes' = '' is out of range"),
        (True, "'hidden-sizes' = True has type bool; expected str"),
        (64.0, "'hidden-sizes' = 64.0 has type float; expected str"),
    ],
)
def test_bad_hidden_sizes_are_refused(value, message):
    with pytest.raises(ConfigError) as error:
        RunConfig.from_mapping({"hidden-sizes": value})
    assert message in str(error.value)


REGISTERED = [
    ("model", MODELS.names()),
    ("dataset", DATASETS.names()),
    ("partitioner", PARTITIONERS.names()),
    ("accountant", tuple(ACCOUNTANT_NAMES)),
    ("grad-sample-mode", GRAD_SAMPLE_MODES),
]


@pytest.mark.parametrize(("key", "names"), REGISTERED)
def test_allowed_values_are_the_registered_names(key, names):
    for name in names:
        # Custom data under DP needs a class count; the others need nothing.
        RunConfig.from_mapping({key: name, "num-classes": 10})
    with pytest.raises(ConfigError) as error:
        RunConfig.from_mapping({key: "unregistered"})
    assert str(error.value) == (
        f"run-config key '{key}' = 'unregistered' is not known: must be one of "
        + ", ".join(repr(name) for name in names)
        + (" or 'package.module:factory'" if key == "model" else "")
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"data-path": "a.npz"},
            "'data-path' = 'a.npz' is out of range: must be empty unless dataset = 'custom'",
        ),
        (
            {"dataset": "custom"},
            "'num-classes' = 0 is out of range: must be set (>= 2) for custom data under DP",
        ),
        (
            {"dataset": "synthetic", "partitioner": "dirichlet"},
            "'partitioner' = 'dirichlet' is out of range: must be 'iid' for dataset 'synthetic' "
            "(its clients are generated apart; set synthetic-alpha / synthetic-beta for "
            "heterogeneity)",
        ),
    ],
)
def test_rules_that_depend_on_the_kind_of_dataset(values, message):
    with pytest.raises(ConfigError) as error:
        RunConfig.from_mapping(values)
    assert message in str(error.value)
