"""Compressing a trained model: magnitude pruning, int8 quantisation, size and sparsity.

PyTorch's own APIs only: :func:`prune_model` prunes the weights of every ``Linear`` and
``Conv`` layer together (``torch.nn.utils.prune.global_unstructured``, L1 magnitude) and
makes the result permanent (``prune.remove``); :func:`quantize_int8` applies dynamic int8
quantisation to the linear layers (``torch.ao.quantization.quantize_dynamic``).
(Model compression, not the compression of the updates clients send.)
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
Mask = dict[str, torch.Tensor]


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The ``(module, "weight")`` pairs of every Linear and Conv layer of ``model``."""
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]


def prune_model(model: nn.Module, sparsity: float) -> Mask:
    """Zero the ``sparsity`` fraction of smallest-magnitude weights, over all layers at once.

    Parameters
    ----------
    model : nn.Module
        Pruned in place; biases and normalisation parameters are kept.
    sparsity : float
        Fraction in ``[0, 1)`` of the Linear and Conv weights (all layers pooled) to zero.

    Returns
    -------
    dict of str to torch.Tensor
        The mask: state-dict key of each pruned weight to a bool tensor, ``True`` where kept.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity {sparsity} must be in [0, 1)")
    targets = prunable_weights(model)
    if not targets:
        raise ValueError("the model has no Linear or Conv layer to prune")
    total = sum(module.weight.numel() for module, _ in targets)
    amount = round(sparsity * total)  # an exact count: the fraction asked for, to one weight
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    for module, name in targets:
        prune.remove(module, name)  # permanent: the zeros are the weights themselves
    return weight_mask(model)


def weight_mask(model: nn.Module) -> Mask:
    """Where the Linear and Conv weights of ``model`` are non-zero (state-dict keys)."""
    names = {id(m): n for n, m in model.named_modules()}
    return {
        f"{names[id(module)]}.weight".lstrip("."): module.weight.detach() != 0
        for module, _ in prunable_weights(model)
    }


def apply_mask(state: dict[str, torch.Tensor], mask: Mask) -> dict[str, torch.Tensor]:
    """A copy of the state dict ``state`` with the weights outside ``mask`` set to zero."""
    return {key: value * mask[key] if key in mask else value for key, value in state.items()}


def count_nonzero(model: nn.Module) -> tuple[int, int]:
    """Non-zero and total values of ``model``'s state dict: float tensors and, in a
    quantised model, the int8 weights (dequantised: zeros stay zero, and weights below half
    a quantisation step become zero); 0-d tensors (scales, zero points) are not counted."""
    nonzero = total = 0
    for tensor in _tensors(list(model.state_dict().values())):
        values = tensor.dequantize() if tensor.is_quantized else tensor
        if values.is_floating_point() and values.dim() > 0:  # not a scale or a zero point
            nonzero, total = nonzero + int(values.count_nonzero()), total + values.numel()
    return nonzero, total


def _tensors(values: list[object]) -> list[torch.Tensor]:
    """The tensors in ``values``, nested tuples (packed quantised weights) unpacked."""
    found: list[torch.Tensor] = []
    for value in values:
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, tuple | list):
            found += _tensors(list(value))
    return found


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of the Linear and Conv weights of ``model`` that are exactly zero."""
    weights = [module.weight for module, _ in prunable_weights(model)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its Linear layers dynamically quantised to int8 (CPU).

    Weights are stored as int8 with a per-tensor scale; activations are quantised on the
    fly. Conv layers stay float (dynamic quantisation covers linear layers only).
    """
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch.ao's eager quantisation is deprecated for torchao
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor", category=UserWarning)
        return quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def save_state(model: nn.Module, path: str | os.PathLike[str]) -> int:
    """Write ``model``'s state dict to ``path`` (atomically); returns the file's size in bytes."""
    from fedmodel.atomic_files import write_atomically

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    write_atomically(Path(path), buffer.getvalue())
    return Path(path).stat().st_size
