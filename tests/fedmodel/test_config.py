import tomllib
from pathlib import Path

import pytest

from fedmodel.config import ConfigError, RunConfig

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


def test_unknown_key_is_refused_with_the_known_keys():
    with pytest.raises(
        ConfigError, match="unknown run-config key 'num-rounds'; known keys: .*num-server-rounds"
    ):
        RunConfig.from_mapping({"num-rounds": 3})
