import pytest
from torch import nn

from fedmodel.config import ConfigError
from fedmodel.models import CNN, ModelSettings, build_model


def test_cnn_uses_group_norm_never_batch_norm():
    model = CNN(input_shape=(1, 28, 28), num_classes=10)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "GroupNorm" in kinds and not any("BatchNorm" in k for k in kinds)


def test_cnn_takes_the_last_hidden_size_as_its_dense_width():
    model = build_model("cnn", input_shape=(1, 8, 8), num_classes=10, hidden_sizes=(32, 16))
    dense = [m for m in model.head if isinstance(m, nn.Linear)]
    assert [m.out_features for m in dense] == [16, 10]


def test_the_fedavg_preset_has_the_papers_parameter_count():
    # McMahan et al. 2017: 5x5 convs of 32 and 64 channels, 2x2 max pools, 512 dense.
    model = build_model("cnn-fedavg", input_shape=(1, 28, 28), num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == 1_663_370
    assert not any(isinstance(m, nn.GroupNorm) for m in model.modules())


def test_the_fedavg_preset_refuses_architecture_keys_it_fixes():
    with pytest.raises(ConfigError, match="'conv-channels' = \\(8,\\) cannot be set with model"):
        build_model(
            "cnn-fedavg",
            input_shape=(1, 28, 28),
            num_classes=10,
            settings=ModelSettings(conv_channels=(8,)),
        )


def test_default_settings_keep_the_historical_cnn_layer_names():
    # Saved run folders (model.pt) and checkpoints load into the default CNN.
    model = build_model("cnn", input_shape=(1, 28, 28), num_classes=10)
    assert list(model.state_dict()) == [
        "features.0.weight",
        "features.0.bias",
        "features.1.weight",
        "features.1.bias",
        "features.4.weight",
        "features.4.bias",
        "features.5.weight",
        "features.5.bias",
        "head.1.weight",
        "head.1.bias",
        "head.3.weight",
        "head.3.bias",
    ]
