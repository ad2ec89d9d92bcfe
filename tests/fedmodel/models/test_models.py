import pytest
import torch
from opacus.validators import ModuleValidator

from fedmodel.models import CNN, build_model


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("input_shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_models_pass_opacus_validation_and_fit_the_data_shape(name, input_shape):
    model = build_model(name, input_shape=input_shape, num_classes=7, hidden_sizes=(32, 16))
    assert ModuleValidator.validate(model, strict=True) == []
    assert model(torch.zeros(5, *input_shape)).shape == (5, 7)


def test_cnn_uses_group_norm_never_batch_norm():
    model = CNN(input_shape=(1, 28, 28), num_classes=10)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "GroupNorm" in kinds and not any("BatchNorm" in k for k in kinds)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'vit': must be one of mlp, cnn"):
        build_model("vit", input_shape=(1, 8, 8), num_classes=10)
