"""Fixed feature extractors applied to every example before training (run-config ``features``).

``scattering``: the ScatterNet features of Tramèr & Boneh 2021 ("Differentially Private
Learning Needs Better Features (or Much More Data)", ICLR, https://arxiv.org/abs/2011.11660):
a 2-D scattering transform (Oyallon & Mallat 2015) with J = 2 scales and L = 8 angles, which
turns each C x H x W image into 81 C channels of H/4 x W/4 coefficients (rounded down), then group
normalization of each example over 27 groups with no learned parameters. Under DP-SGD a
linear model or a small CNN on these features learns more per unit of privacy than an
end-to-end CNN (their Table 1: MNIST 98.7% against 98.1% at ε = 3).

The transform is a fixed function of one example, chosen before any data is seen: applying
it costs no privacy (each record's features depend on that record only, so DP-SGD's
per-example sensitivity is unchanged) and every node computes it on its own examples. The
scattering itself is kymatio's (``pip install 'fedmodel[features]'``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional
from torch.utils.data import TensorDataset

from fedmodel.config import FEATURES, ConfigError

SCATTERING_SCALES = 2  # J: the output is 2**J times smaller per side
SCATTERING_ANGLES = 8  # L
SCATTERING_GROUPS = 27  # group-norm groups per example (Tramèr & Boneh's choice)
_CHUNK = 1000  # examples per scattering call: bounds memory on large datasets


def feature_shape(features: str, input_shape: Sequence[int]) -> tuple[int, ...]:
    """Shape of one example after ``features`` (its ``input_shape`` before).

    Raises :class:`~fedmodel.config.ConfigError` where ``features`` cannot apply.
    """
    shape = tuple(int(s) for s in input_shape)
    if features not in FEATURES:
        known = ", ".join(repr(f) for f in FEATURES)
        raise ConfigError(
            f"run-config key 'features' = {features!r} is not known: must be one of {known}"
        )
    if features == "none":
        return shape
    _check_image(shape)
    channels, height, width = shape
    per_channel = (
        1
        + SCATTERING_SCALES * SCATTERING_ANGLES
        + (SCATTERING_ANGLES**2 * SCATTERING_SCALES * (SCATTERING_SCALES - 1) // 2)
    )
    scale = 2**SCATTERING_SCALES
    return (channels * per_channel, height // scale, width // scale)


def extract_features(features: str, x: torch.Tensor) -> torch.Tensor:
    """``x`` (``(N, *input_shape)`` float32) after ``features``; ``x`` itself for ``none``."""
    out_shape = feature_shape(features, tuple(x.shape[1:]))
    if features == "none":
        return x
    scattering = _scattering(tuple(x.shape[2:]))
    parts = []
    with torch.no_grad():
        for start in range(0, len(x), _CHUNK):
            coefficients = scattering(x[start : start + _CHUNK].float().contiguous())
            coefficients = coefficients.reshape(len(coefficients), *out_shape)
            parts.append(functional.group_norm(coefficients, SCATTERING_GROUPS))
    if not parts:
        return torch.empty((0, *out_shape), dtype=torch.float32)
    return torch.cat(parts)


class FeatureStore:
    """The features of one dataset's examples, each computed the first time it is asked for.

    A client asks for its share only, the server for the test split only: a deployment
    node computes the features of its own examples and no others, and in a simulation every
    example is computed once, however many runs (an experiment grid) or clients ask.
    Memory for the training split's features is reserved up front but only touched, row
    by row, as examples are computed (the OS commits pages on first write).

    Parameters
    ----------
    features : str
        One of :data:`~fedmodel.config.FEATURES` other than ``"none"``.
    train, test : TensorDataset
        The raw ``(x, y)`` examples (``test`` may be None).
    """

    def __init__(self, features: str, *, train: TensorDataset, test: TensorDataset | None) -> None:
        x, self._train_labels = train.tensors
        self.features = features
        self.input_shape = feature_shape(features, tuple(x.shape[1:]))
        self._train_inputs = x
        self._train = torch.empty((len(x), *self.input_shape), dtype=torch.float32)
        self._computed = torch.zeros(len(x), dtype=torch.bool)
        self._raw_test = test
        self._test: TensorDataset | None = None

    @property
    def num_computed(self) -> int:
        """How many training examples have been featurized so far."""
        return int(self._computed.sum())

    def train_subset(self, indices: np.ndarray | Sequence[int]) -> TensorDataset:
        """The featurized training examples at ``indices`` (copied: the caller owns them)."""
        index = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        missing = index[~self._computed[index]].unique()
        if len(missing):
            self._train[missing] = extract_features(self.features, self._train_inputs[missing])
            self._computed[missing] = True
        return TensorDataset(self._train[index].clone(), self._train_labels[index].clone())

    def test(self) -> TensorDataset | None:
        """The featurized test split (computed once), or None without one."""
        if self._test is None and self._raw_test is not None:
            x, y = self._raw_test.tensors
            self._test = TensorDataset(extract_features(self.features, x), y)
        return self._test


def _check_image(shape: tuple[int, ...]) -> None:
    scale = 2**SCATTERING_SCALES
    if len(shape) != 3 or min(shape[1:]) < scale:
        raise ConfigError(
            f"run-config key 'features' = 'scattering' needs images of shape (channels, "
            f"height, width) with height and width >= {scale}; this data's examples have "
            f"shape {shape}"
        )


def _scattering(image_size: tuple[int, int]):
    try:
        # kymatio 0.3's top-level ``kymatio.torch`` also imports its 3-D transform, which
        # needs ``scipy.special.sph_harm`` (removed in SciPy 1.17): import the 2-D one only.
        from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D
    except ImportError as error:
        raise ConfigError(
            "run-config key 'features' = 'scattering' needs kymatio: "
            f"pip install 'fedmodel[features]' ({error})"
        ) from error
    return ScatteringTorch2D(J=SCATTERING_SCALES, shape=image_size, L=SCATTERING_ANGLES)
