"""Convolutional classifier, DP-SGD compatible (GroupNorm, never BatchNorm)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn


class CNN(nn.Module):
    """Conv blocks (3x3 conv, GroupNorm, ReLU, 2x2 max-pool), then a hidden linear layer.

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
    """

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (16, 32),
        hidden_size: int = 64,
    ) -> None:
        super().__init__()
        shape = tuple(input_shape)
        if len(shape) == 2:
            shape = (1, *shape)
        if len(shape) != 3:
            raise ValueError(
                f"CNN needs (C, H, W) or (H, W) inputs, got shape {tuple(input_shape)}"
            )
        self.input_shape = shape
        blocks: list[nn.Module] = []
        in_channels, height, width = shape
        for out_channels in channels:
            blocks += [
                nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
                nn.GroupNorm(_num_groups(out_channels), out_channels),
                nn.ReLU(),
            ]
            if min(height, width) >= 2:
                blocks.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * height * width, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3:  # (N, H, W): add the channel dimension
            x = x.unsqueeze(1)
        return self.head(self.features(x))


def build_cnn(
    *, input_shape: Sequence[int], num_classes: int, hidden_sizes: Sequence[int]
) -> CNN:
    """The ``cnn`` model: its conv blocks are fixed; of ``hidden_sizes`` only the last entry
    is used, as the width of the hidden linear layer before the head."""
    return CNN(input_shape=input_shape, num_classes=num_classes, hidden_size=hidden_sizes[-1])


def _num_groups(channels: int) -> int:
    """The largest group count <= 8 that divides ``channels``."""
    return math.gcd(channels, 8) or 1
