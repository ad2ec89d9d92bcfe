"""Models, chosen by name; input shape and class count come from the data."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from fedmodel.models.cnn import CNN
from fedmodel.models.mlp import MLP

MODEL_NAMES = ("mlp", "cnn")


def build_model(
    name: str,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    hidden_sizes: Sequence[int] = (64,),
) -> nn.Module:
    """Build the model called ``name`` for inputs of ``input_shape`` and ``num_classes``.

    ``hidden_sizes`` sets the MLP's hidden layers; the CNN uses its last entry as the
    width of its hidden linear layer.
    """
    if name == "mlp":
        return MLP(input_shape=input_shape, num_classes=num_classes, hidden_sizes=hidden_sizes)
    if name == "cnn":
        return CNN(input_shape=input_shape, num_classes=num_classes, hidden_size=hidden_sizes[-1])
    raise ValueError(f"unknown model {name!r}: must be one of {', '.join(MODEL_NAMES)}")


__all__ = ["CNN", "MLP", "MODEL_NAMES", "build_model"]
