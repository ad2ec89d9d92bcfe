"""Factories a run config names as ``model = "user_models:<factory>"`` (tests put this
folder on ``sys.path``): what a user's own model module looks like."""

from torch import nn


def tiny_cnn(*, input_shape, num_classes):
    channels = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * input_shape[1] * input_shape[2], num_classes),
    )


def batch_norm_cnn(*, input_shape, num_classes):
    channels = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * input_shape[1] * input_shape[2], num_classes),
    )


def not_a_module(*, input_shape, num_classes):
    return "a string"
