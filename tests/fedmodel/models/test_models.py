import pytest
import torch
from opacus.validators import ModuleValidator

from fedmodel.config import ConfigError, RunConfig
from fedmodel.models import MODELS, ModelSettings, build_model, model_settings

CONFIGURED = [
    ModelSettings(hidden_sizes=(32, 16)),
    ModelSettings(activation="tanh", pooling="avg", normalization="none"),
    ModelSettings(conv_channels=(8, 8, 8), kernel_size=5, hidden_sizes=(12,)),
]


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("settings", CONFIGURED)
@pytest.mark.parametrize("input_shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_configured_models_pass_opacus_validation_and_fit_the_data_shape(
    name, settings, input_shape
):
    model = build_model(name, input_shape=input_shape, num_classes=7, settings=settings)
    assert ModuleValidator.validate(model, strict=True) == []
    assert model(torch.zeros(5, *input_shape)).shape == (5, 7)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_the_fedavg_preset_passes_opacus_validation(activation):
    model = build_model(
        "cnn-fedavg",
        input_shape=(1, 28, 28),
        num_classes=10,
        settings=ModelSettings(activation=activation),
    )
    assert ModuleValidator.validate(model, strict=True) == []
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("name", MODELS.names())
def test_every_builder_says_which_settings_it_reads(name):
    assert "hidden_sizes" in MODELS.get(name).__doc__


def test_the_registered_models():
    assert MODELS.names() == ("mlp", "cnn", "cnn-fedavg", "linear")


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'vit': must be one of mlp, cnn"):
        build_model("vit", input_shape=(1, 8, 8), num_classes=10)


def test_the_run_config_keys_reach_the_model():
    config = RunConfig(
        model="cnn",
        conv_channels="4,6",
        kernel_size=5,
        pooling="avg",
        activation="tanh",
        normalization="none",
        hidden_sizes="20",
    )
    model = build_model(
        config.model, input_shape=(1, 8, 8), num_classes=3, settings=model_settings(config)
    )
    kinds = [type(m).__name__ for m in model.features]
    assert kinds == ["Conv2d", "Tanh", "AvgPool2d", "Conv2d", "Tanh", "AvgPool2d"]
    assert [m.out_channels for m in model.features if isinstance(m, torch.nn.Conv2d)] == [4, 6]
    assert model.features[0].kernel_size == (5, 5)
    assert model.head[1].out_features == 20


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("conv-channels", "16,x", "comma-separated list of positive integers"),
        ("kernel-size", 4, "odd integer"),
        ("pooling", "median", "'max', 'avg'"),
        ("activation", "gelu", "'relu', 'tanh'"),
        ("normalization", "batch", "'group', 'none'"),
        ("model", "not a path", "or 'package.module:factory'"),
    ],
)
def test_bad_model_keys_are_refused_naming_key_and_value(key, value, message):
    with pytest.raises(ConfigError, match=f"'{key}' = {value!r}.*{message}"):
        RunConfig.from_mapping({key: value})


def test_the_run_config_accepts_a_factory_path():
    assert RunConfig(model="my_pkg.models:build").model == "my_pkg.models:build"
