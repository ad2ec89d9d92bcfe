"""Magnitude pruning, int8 quantisation and their measures (digits, MLP and CNN)."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from fedmodel.data import load_dataset
from fedmodel.model_compression import (
    apply_mask,
    count_nonzero,
    prunable_weights,
    prune_model,
    quantize_int8,
    save_state,
    weight_mask,
    weight_sparsity,
)
from fedmodel.models import build_model
from fedmodel.training import evaluate


def trained_mlp() -> tuple[torch.nn.Module, object]:
    model, test = _trained_mlp()
    return copy.deepcopy(model), test


@functools.cache
def _trained_mlp() -> tuple[torch.nn.Module, object]:
    splits = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=splits.input_shape, num_classes=splits.num_classes)
    x, y = splits.train.tensors
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(100):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval(), splits.test


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.95])
def test_the_requested_fraction_of_weights_is_exactly_zero(model_name: str, sparsity: float):
    torch.manual_seed(0)
    model = build_model(model_name, input_shape=(1, 8, 8), num_classes=10)
    total = sum(m.weight.numel() for m, _ in prunable_weights(model))
    mask = prune_model(model, sparsity)
    zeros = sum(int((m.weight == 0).sum()) for m, _ in prunable_weights(model))
    assert zeros == round(sparsity * total)
    assert weight_sparsity(model) == pytest.approx(sparsity, abs=1 / total)
    assert not any("weight_orig" in key for key in model.state_dict())  # made permanent
    assert sum(int((~m).sum()) for m in mask.values()) == zeros


def test_the_smallest_weights_go_first_across_layers():
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10)
    before = torch.cat([m.weight.detach().abs().flatten() for m, _ in prunable_weights(model)])
    prune_model(model, 0.8)
    after = torch.cat([m.weight.detach().abs().flatten() for m, _ in prunable_weights(model)])
    assert before[after == 0].max() <= before[after != 0].min()


def test_apply_mask_zeroes_what_was_pruned_and_keeps_the_rest():
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10)
    mask = prune_model(model, 0.9)
    moved = {k: v + 1.0 for k, v in model.state_dict().items()}  # training moved every weight
    masked = apply_mask(moved, mask)
    for key, keep in mask.items():
        assert torch.equal(masked[key] == 0, ~keep)
    assert weight_mask(model).keys() == mask.keys()
    assert torch.equal(masked["layers.1.bias"], moved["layers.1.bias"])


def test_int8_model_still_classifies_and_is_smaller(tmp_path):
    model, test = trained_mlp()
    _, float_accuracy = evaluate(model, test)
    quantized = quantize_int8(model)
    _, int8_accuracy = evaluate(quantized, test)
    assert float_accuracy > 0.9
    assert int8_accuracy == pytest.approx(float_accuracy, abs=0.02)
    assert save_state(quantized, tmp_path / "q.pt") < save_state(model, tmp_path / "f.pt")
    assert count_nonzero(model)[0] == count_nonzero(model)[1]  # dense: nothing is zero


def test_pruned_then_quantised_keeps_its_zeros():
    model, _ = trained_mlp()
    prune_model(model, 0.9)
    nonzero, _ = count_nonzero(model)
    assert count_nonzero(quantize_int8(model))[0] <= nonzero


def test_save_state_returns_the_file_size(tmp_path):
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10)
    size = save_state(model, tmp_path / "m.pt")
    assert size == (tmp_path / "m.pt").stat().st_size
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    assert state.keys() == model.state_dict().keys()


def test_bad_sparsity_is_refused():
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ValueError, match="must be in"):
        prune_model(model, 1.0)
