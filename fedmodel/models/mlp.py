"""Feedforward classifiers: the MLP, and the linear model (no hidden layer)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from fedmodel.models.settings import ModelSettings, activation_layer, refuse_set


class MLP(nn.Module):
    """A multilayer perceptron: flatten, then Linear + activation blocks, then a linear head.

    Parameters
    ----------
    input_shape : Sequence[int]
        Shape of one example (without the batch dimension); it is flattened.
    num_classes : int
        Number of output logits.
    hidden_sizes : Sequence[int]
        Width of each hidden layer.
    activation : str
        ``"relu"`` or ``"tanh"``, after each hidden layer.
    """

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        hidden_sizes: Sequence[int] = (64,),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        ModelSettings(activation=activation)  # validates the name
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), activation_layer(activation)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def build_mlp(*, input_shape: Sequence[int], num_classes: int, settings: ModelSettings) -> MLP:
    """The ``mlp`` model: ``hidden_sizes`` is the width of each hidden layer, in order;
    ``activation`` follows each of them (the conv keys are not read)."""
    return MLP(
        input_shape=input_shape,
        num_classes=num_classes,
        hidden_sizes=settings.hidden_sizes,
        activation=settings.activation,
    )


def build_linear(*, input_shape: Sequence[int], num_classes: int, settings: ModelSettings) -> MLP:
    """The ``linear`` model: multinomial logistic regression on the flattened input (one
    ``Linear`` layer), e.g. on ``features = "scattering"`` (Tramèr & Boneh 2021's
    ScatterNet + linear). It reads no architecture keys; setting ``hidden_sizes``
    (``hidden-sizes``) or ``activation`` is an error."""
    refuse_set(
        settings,
        ("hidden_sizes", "activation"),
        model="linear",
        instead="use model = 'mlp' for hidden layers",
    )
    return MLP(input_shape=input_shape, num_classes=num_classes, hidden_sizes=())
