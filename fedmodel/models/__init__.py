"""Models, chosen by name (run-config ``model``); input shape and class count come from the data.

A model is a module with a builder ``(*, input_shape, num_classes, hidden_sizes) -> nn.Module``
whose docstring says what ``hidden_sizes`` (run-config ``hidden-sizes``) means for it, and
one line here registering the builder in :data:`MODELS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from torch import nn

from fedmodel.models.cnn import CNN, build_cnn
from fedmodel.models.mlp import MLP, build_mlp
from fedmodel.registry import Registry


class ModelBuilder(Protocol):
    """Builds a model for examples of ``input_shape`` and ``num_classes`` output logits."""

    def __call__(
        self, *, input_shape: Sequence[int], num_classes: int, hidden_sizes: Sequence[int]
    ) -> nn.Module: ...


MODELS: Registry[ModelBuilder] = Registry("model")
MODELS.register("mlp", build_mlp)
MODELS.register("cnn", build_cnn)


def build_model(
    name: str,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    hidden_sizes: Sequence[int] = (64,),
) -> nn.Module:
    """Build the model called ``name`` for inputs of ``input_shape`` and ``num_classes``.

    What ``hidden_sizes`` sets is the registered builder's to say (see :data:`MODELS`).
    An unknown ``name`` raises ``ValueError`` naming the known models.
    """
    builder = MODELS.get(name)
    return builder(input_shape=input_shape, num_classes=num_classes, hidden_sizes=hidden_sizes)


__all__ = ["CNN", "MLP", "MODELS", "ModelBuilder", "build_model"]
