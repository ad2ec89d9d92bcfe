"""Models, chosen by name (run-config ``model``); input shape and class count come from the data.

A model is a module with a builder ``(*, input_shape, num_classes, settings) -> nn.Module``
whose docstring says which fields of ``settings`` (a :class:`ModelSettings`: the run
config's ``hidden-sizes``, ``conv-channels``, ``kernel-size``, ``pooling``,
``activation``, ``normalization``) it reads, and one line here registering the builder in
:data:`MODELS`. A ``model`` of the form ``package.module:factory`` is the user's own
(:mod:`fedmodel.models.factory`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from torch import nn

from fedmodel.models.cnn import CNN, build_cnn, build_cnn_fedavg
from fedmodel.models.dp_check import prepare_for_dp
from fedmodel.models.factory import build_from_factory, is_factory_path
from fedmodel.models.mlp import MLP, build_linear, build_mlp
from fedmodel.models.settings import ModelSettings
from fedmodel.registry import Registry

if TYPE_CHECKING:
    from fedmodel.config import RunConfig


class ModelBuilder(Protocol):
    """Builds a model for examples of ``input_shape`` and ``num_classes`` output logits."""

    def __call__(
        self, *, input_shape: Sequence[int], num_classes: int, settings: ModelSettings
    ) -> nn.Module: ...


MODELS: Registry[ModelBuilder] = Registry("model")
MODELS.register("mlp", build_mlp)
MODELS.register("cnn", build_cnn)
MODELS.register("cnn-fedavg", build_cnn_fedavg)
MODELS.register("linear", build_linear)


def build_model(
    name: str,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    hidden_sizes: Sequence[int] | None = None,
    settings: ModelSettings | None = None,
) -> nn.Module:
    """Build the model called ``name`` for inputs of ``input_shape`` and ``num_classes``.

    ``name`` is a registered model (see :data:`MODELS`; which ``settings`` it reads is
    the builder's to say) or ``package.module:factory``, called as
    ``factory(input_shape=..., num_classes=...)``. ``hidden_sizes`` alone is shorthand
    for ``settings=ModelSettings(hidden_sizes=...)``. With ``settings.fix_model`` the
    model goes through Opacus's ``ModuleValidator.fix``; with ``settings.dp`` it must
    pass ``ModuleValidator.validate`` (:func:`~fedmodel.models.dp_check.prepare_for_dp`).

    Raises ``ValueError`` for an unknown ``name`` (naming the known models) and
    :class:`~fedmodel.config.ConfigError` for a factory that cannot be used or a model
    DP-SGD cannot train.
    """
    if settings is None:
        settings = ModelSettings(hidden_sizes=tuple(hidden_sizes or (64,)))
    elif hidden_sizes is not None:
        raise ValueError("give hidden_sizes or settings, not both")
    if is_factory_path(name):
        model = build_from_factory(name, input_shape=input_shape, num_classes=num_classes)
    else:
        builder = MODELS.get(name)
        model = builder(input_shape=input_shape, num_classes=num_classes, settings=settings)
    return prepare_for_dp(model, name=name, dp=settings.dp, fix=settings.fix_model)


def model_settings(config: RunConfig) -> ModelSettings:
    """The :class:`ModelSettings` of a validated run config (every node builds the same)."""
    return ModelSettings(
        hidden_sizes=config.hidden_layer_sizes,
        conv_channels=config.conv_channel_sizes,
        kernel_size=config.kernel_size,
        pooling=config.pooling,
        activation=config.activation,
        normalization=config.normalization,
        dp=config.dp,
        fix_model=config.fix_model,
    )


__all__ = [
    "CNN",
    "MLP",
    "MODELS",
    "ModelBuilder",
    "ModelSettings",
    "build_model",
    "model_settings",
]
