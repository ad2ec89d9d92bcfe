import pytest
import torch
from opacus.validators import ModuleValidator

from fedmodel.models import MODELS, build_model


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("input_shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_models_pass_opacus_validation_and_fit_the_data_shape(name, input_shape):
    model = build_model(name, input_shape=input_shape, num_classes=7, hidden_sizes=(32, 16))
    assert ModuleValidator.validate(model, strict=True) == []
    assert model(torch.zeros(5, *input_shape)).shape == (5, 7)


@pytest.mark.parametrize("name", MODELS.names())
def test_every_builder_says_what_hidden_sizes_means_for_it(name):
    assert "hidden_sizes" in MODELS.get(name).__doc__


def test_the_registered_models():
    assert MODELS.names() == ("mlp", "cnn")


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'vit': must be one of mlp, cnn"):
        build_model("vit", input_shape=(1, 8, 8), num_classes=10)
