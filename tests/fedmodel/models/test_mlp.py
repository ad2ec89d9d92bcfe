import pytest
from torch import nn

from fedmodel.config import ConfigError
from fedmodel.models import ModelSettings, build_model


def test_mlp_has_one_hidden_layer_per_hidden_size():
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden_sizes=(32, 16))
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(64, 32), (32, 16), (16, 10)]


def test_mlp_activation_follows_every_hidden_layer():
    model = build_model(
        "mlp",
        input_shape=(1, 8, 8),
        num_classes=10,
        settings=ModelSettings(hidden_sizes=(32, 16), activation="tanh"),
    )
    assert [type(m).__name__ for m in model.layers] == [
        "Flatten",
        "Linear",
        "Tanh",
        "Linear",
        "Tanh",
        "Linear",
    ]


def test_linear_is_one_layer_on_the_flattened_input():
    model = build_model("linear", input_shape=(81, 7, 7), num_classes=10, settings=ModelSettings())
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(81 * 49, 10)]
    assert sum(p.numel() for p in model.parameters()) == 81 * 49 * 10 + 10


def test_linear_refuses_hidden_sizes_naming_the_key():
    with pytest.raises(
        ConfigError, match=r"'hidden-sizes' = \(32,\) cannot be set with model = 'linear'"
    ):
        build_model(
            "linear", input_shape=(64,), num_classes=10, settings=ModelSettings(hidden_sizes=(32,))
        )
