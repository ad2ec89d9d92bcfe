"""Feedforward classifier."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn


class MLP(nn.Module):
    """A multilayer perceptron: flatten, then Linear + ReLU blocks, then a linear head.

    Parameters
    ----------
    input_shape : Sequence[int]
        Shape of one example (without the batch dimension); it is flattened.
    num_classes : int
        Number of output logits.
    hidden_sizes : Sequence[int]
        Width of each hidden layer.
    """

    def __init__(
        self, *, input_shape: Sequence[int], num_classes: int, hidden_sizes: Sequence[int] = (64,)
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def build_mlp(
    *, input_shape: Sequence[int], num_classes: int, hidden_sizes: Sequence[int]
) -> MLP:
    """The ``mlp`` model: ``hidden_sizes`` is the width of each hidden layer, in order."""
    return MLP(input_shape=input_shape, num_classes=num_classes, hidden_sizes=hidden_sizes)
