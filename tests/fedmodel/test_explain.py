"""fedmodel.explain: Captum attributions of a run's model on the server's test set."""

import json
import sys

import numpy as np
import pytest
import torch

from fedmodel.config import RunConfig
from fedmodel.explain import (
    METHODS,
    MissingExtra,
    attribute,
    choose_examples,
    feature_mask,
    load_run_model,
)
from fedmodel.models import build_model


@pytest.fixture
def model_and_inputs():
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden_sizes=(16,))
    inputs = torch.rand(4, 1, 8, 8) * 16
    targets = torch.tensor([0, 3, 5, 9])
    return model.eval(), inputs, targets


def test_integrated_gradients_completeness(model_and_inputs):
    """Sundararajan et al. 2017: attributions sum to F(x) - F(baseline) for the target."""
    model, inputs, targets = model_and_inputs
    values = attribute(model, inputs, targets, method="integrated-gradients", n_steps=256)
    with torch.no_grad():
        rows = torch.arange(len(targets))
        gap = model(inputs)[rows, targets] - model(torch.zeros_like(inputs))[rows, targets]
    sums = values.reshape(len(targets), -1).sum(dim=1)
    assert values.shape == inputs.shape
    torch.testing.assert_close(sums, gap, rtol=1e-2, atol=1e-2 * float(gap.abs().max()))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_one_value_per_input_feature(model_and_inputs, method):
    model, inputs, targets = model_and_inputs
    values = attribute(model, inputs[:2], targets[:2], method=method, n_samples=40, n_steps=8)
    assert values.shape == inputs[:2].shape and torch.isfinite(values).all()


def test_unknown_method_is_refused(model_and_inputs):
    model, inputs, targets = model_and_inputs
    with pytest.raises(ValueError, match="unknown method 'saliency'"):
        attribute(model, inputs, targets, method="saliency")


def test_missing_captum_names_the_extra(model_and_inputs, monkeypatch):
    monkeypatch.setitem(sys.modules, "captum.attr", None)  # import fails
    model, inputs, targets = model_and_inputs
    with pytest.raises(MissingExtra, match=r'pip install "\.\[explain\]"'):
        attribute(model, inputs, targets)


def test_examples_are_chosen_per_class_in_order():
    labels = torch.tensor([1, 0, 1, 2, 0, 1, 0])
    assert choose_examples(labels, per_class=2, num_classes=3).tolist() == [1, 4, 0, 2, 3]


def test_feature_mask_groups_image_patches_and_keeps_vector_features():
    mask = feature_mask((1, 8, 8), patches=4)
    assert mask.shape == (1, 1, 8, 8) and len(mask.unique()) == 16
    assert mask[0, 0, 0, 0] == mask[0, 0, 1, 1] != mask[0, 0, 0, 2]
    assert feature_mask((5,)).tolist() == [[0, 1, 2, 3, 4]]


def _run_folder(path, **run_config):
    config = RunConfig.from_mapping(run_config)
    model = build_model(config.model, input_shape=(4,), num_classes=2)
    path.mkdir()
    document = {"run_config": config.to_mapping(), "input_shape": [4], "num_classes": 2}
    (path / "config.json").write_text(json.dumps(document))
    torch.save(model.state_dict(), path / "model.pt")
    return path


def test_a_folder_that_is_no_run_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a run folder"):
        load_run_model(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no model.pt"):
        load_run_model(tmp_path)


def test_custom_data_without_a_server_test_set_is_refused(tmp_path):
    run = _run_folder(tmp_path / "run", dataset="custom", **{"data-path": "x.csv", "dp": False})
    with pytest.raises(ValueError, match="no server test set.*never computed on client data"):
        load_run_model(run)


def test_custom_data_is_explained_on_the_run_configs_test_data(tmp_path):
    rows = np.random.default_rng(0).normal(size=(12, 4))
    lines = ["a,b,c,d,label"] + [
        ",".join(f"{v:.3f}" for v in r) + f",{i % 2}" for i, r in enumerate(rows)
    ]
    (tmp_path / "test.csv").write_text("\n".join(lines) + "\n")
    run = _run_folder(
        tmp_path / "run",
        dataset="custom",
        **{"data-path": "x.csv", "test-data": str(tmp_path / "test.csv"), "dp": False},
    )
    loaded = load_run_model(run)
    assert loaded.test_x.shape == (12, 4) and not loaded.is_image
    assert loaded.test_y.tolist() == [i % 2 for i in range(12)]
