"""Convolutional classifiers, DP-SGD compatible (GroupNorm or no norm, never BatchNorm)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from fedmodel.models.settings import ModelSettings, activation_layer, refuse_set

# McMahan et al. 2017's MNIST CNN ("Communication-Efficient Learning of Deep Networks
# from Decentralized Data", AISTATS, https://arxiv.org/abs/1602.05629, Sec. 3).
FEDAVG_CONV_CHANNELS, FEDAVG_KERNEL_SIZE, FEDAVG_DENSE_SIZE = (32, 64), 5, 512


class CNN(nn.Module):
    """Conv blocks (conv, GroupNorm, activation, 2x2 pool), then a hidden linear layer.

    BatchNorm mixes statistics across the examples of a batch, which breaks the
    per-example gradient bound of DP-SGD; GroupNorm normalises each example on its own
    (Opacus's ``ModuleValidator`` rejects BatchNorm for this reason).

    Parameters
    ----------
    input_shape : Sequence[int]
        ``(channels, height, width)`` of one example; a ``(height, width)`` shape is
        read as one channel.
    num_classes : int
        Number of output logits.
    channels : Sequence[int]
        Output channels of each conv block; a block pools only while the feature map
        is at least 2x2.
    hidden_size : int
        Width of the linear layer before the head.
    kernel_size : int
        Odd side of the square conv kernels, 'same' padding (``kernel_size // 2``).
    pooling : str
        ``"max"`` or ``"avg"`` 2x2 pooling.
    activation : str
        ``"relu"`` or ``"tanh"``, after each conv block and the hidden linear layer.
    normalization : str
        ``"group"`` (GroupNorm after each conv) or ``"none"``.
    """

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (16, 32),
        hidden_size: int = 64,
        kernel_size: int = 3,
        pooling: str = "max",
        activation: str = "relu",
        normalization: str = "group",
    ) -> None:
        super().__init__()
        shape = tuple(input_shape)
        if len(shape) == 2:
            shape = (1, *shape)
        if len(shape) != 3:
            raise ValueError(
                f"CNN needs (C, H, W) or (H, W) inputs, got shape {tuple(input_shape)}"
            )
        # Validates kernel size, pooling, activation and normalization in one place.
        ModelSettings(
            kernel_size=kernel_size,
            pooling=pooling,
            activation=activation,
            normalization=normalization,
        )
        self.input_shape = shape
        pool = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}[pooling]
        blocks: list[nn.Module] = []
        in_channels, height, width = shape
        for out_channels in channels:
            blocks.append(
                nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
            )
            if normalization == "group":
                blocks.append(nn.GroupNorm(_num_groups(out_channels), out_channels))
            blocks.append(activation_layer(activation))
            if min(height, width) >= 2:
                blocks.append(pool(2))
                height, width = height // 2, width // 2
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * height * width, hidden_size),
            activation_layer(activation),
            nn.Linear(hidden_size, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3:  # (N, H, W): add the channel dimension
            x = x.unsqueeze(1)
        return self.head(self.features(x))


def build_cnn(*, input_shape: Sequence[int], num_classes: int, settings: ModelSettings) -> CNN:
    """The ``cnn`` model: conv blocks of ``settings.conv_channels`` (run-config
    ``conv-channels``), ``kernel_size``, ``pooling``, ``normalization`` and
    ``activation``; of ``hidden_sizes`` only the last entry is used, as the width of the
    hidden linear layer before the head."""
    return CNN(
        input_shape=input_shape,
        num_classes=num_classes,
        channels=settings.conv_channels,
        hidden_size=settings.hidden_sizes[-1],
        kernel_size=settings.kernel_size,
        pooling=settings.pooling,
        activation=settings.activation,
        normalization=settings.normalization,
    )


def build_cnn_fedavg(
    *, input_shape: Sequence[int], num_classes: int, settings: ModelSettings
) -> CNN:
    """The ``cnn-fedavg`` preset: McMahan et al. 2017's CNN, two 5x5 convs (32, 64
    channels, 'same' padding) each with 2x2 max pooling, a 512-unit dense layer, no
    normalization (1,663,370 parameters on 28x28x1 with 10 classes). Only ``activation``
    is read (ReLU in the paper; tanh for DP-SGD); ``hidden_sizes`` and the other
    architecture keys are fixed by the preset, and setting them is an error."""
    refuse_set(
        settings,
        ("hidden_sizes", "conv_channels", "kernel_size", "pooling", "normalization"),
        model="cnn-fedavg",
        instead="use model = 'cnn' to choose it",
    )
    return CNN(
        input_shape=input_shape,
        num_classes=num_classes,
        channels=FEDAVG_CONV_CHANNELS,
        hidden_size=FEDAVG_DENSE_SIZE,
        kernel_size=FEDAVG_KERNEL_SIZE,
        pooling="max",
        activation=settings.activation,
        normalization="none",
    )


def _num_groups(channels: int) -> int:
    """The largest group count <= 8 that divides ``channels``."""
    return math.gcd(channels, 8) or 1
