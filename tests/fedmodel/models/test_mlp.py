from torch import nn

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
