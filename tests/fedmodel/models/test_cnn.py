from torch import nn

from fedmodel.models import CNN, build_model


def test_cnn_uses_group_norm_never_batch_norm():
    model = CNN(input_shape=(1, 28, 28), num_classes=10)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "GroupNorm" in kinds and not any("BatchNorm" in k for k in kinds)


def test_cnn_takes_the_last_hidden_size_as_its_dense_width():
    model = build_model("cnn", input_shape=(1, 8, 8), num_classes=10, hidden_sizes=(32, 16))
    dense = [m for m in model.head if isinstance(m, nn.Linear)]
    assert [m.out_features for m in dense] == [16, 10]
