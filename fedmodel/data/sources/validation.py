"""Checks every data source passes before training, each failing with a :class:`DataError`.

A message always names where the data came from (file, row or index) and what is wrong,
so the person who owns the data can fix it without reading a traceback.
"""

from __future__ import annotations

import math

import numpy as np

from fedmodel.config import ConfigError
from fedmodel.privacy.delta import check_delta


class DataError(ValueError):
    """Client or test data that cannot be trained on: unreadable, malformed or unfit.

    An error carries two texts:

    - ``str(error)``, the full message, for the node's own log and for local
      simulations. It may quote the data: a cell, a feature or label value, a class
      folder or image file name, the text of an exception raised while reading.
    - ``error.public``, the text that may leave the node (a client reports it to the
      server, which keeps it in its run folder). It names the place (the path or loader
      spec the node was configured with; the line, row, item, example or label index;
      the column name or array key; an image by its position in sorted order) and the
      kind of problem (not a number, not an integer, out of range, non-finite, wrong
      shape or dtype, missing, unreadable), and never a value taken from the data: no
      cell text, feature, pixel or label value, no class or file name found inside an
      image folder, no array contents, no number computed from the records (largest
      label, class count inferred from labels, min or max), and no text of a foreign
      exception (OS, NumPy, zip, PIL, a user's loader): only its type name. Schema and
      configuration may appear: configured paths and options, CSV header column names,
      array keys, dtypes, shapes, image modes and sizes, numbers of examples, fields
      or class folders.

    ``public=None`` (the default) declares the message itself value-free: ``public`` is
    then the message. Every raise whose message quotes the data passes ``public=``.
    """

    def __init__(self, message: str, *, public: str | None = None) -> None:
        super().__init__(message)
        self.public: str = message if public is None else public


# Numeric dtype kinds accepted as features: bool, signed/unsigned int, float.
NUMERIC_KINDS = "biuf"
# What training sees: every feature is converted to this dtype (fedmodel.data.sources.base).
TRAINING_DTYPE = np.dtype(np.float32)
# Largest class count inferred from labels (largest label + 1) taken as plausible: above it
# the run config must say num-classes (a model of 1e9 classes would need 256 GB).
MAX_INFERRED_CLASSES = 10_000


def check_feature_dtype(dtype: np.dtype, *, origin: str) -> None:
    """Features must be numbers (not strings, objects or complex values)."""
    if dtype.kind not in NUMERIC_KINDS:
        raise DataError(
            f"{origin}: features have dtype {dtype}; they must be numeric (int, float or bool)"
        )


def check_shape(shape: tuple[int, ...], *, origin: str) -> None:
    """``[N, ...]`` with at least one feature per example."""
    if len(shape) < 2:
        raise DataError(
            f"{origin}: features have shape {shape}; expected [N, features...] "
            "(one row per example)"
        )
    if shape[0] == 0:
        raise DataError(f"{origin}: the dataset is empty (0 examples)")
    if math.prod(shape[1:]) == 0:
        raise DataError(f"{origin}: examples have shape {shape[1:]}, which holds no features")


def check_finite(x: np.ndarray, *, origin: str, offset: int = 0) -> None:
    """No NaN or Inf, as training sees the values: converted to :data:`TRAINING_DTYPE`.

    A value finite in ``x`` but beyond float32's range (``1e308`` as float64) becomes
    Inf in training; it is refused with its own message. The message names the first
    bad example (``offset`` + its row).
    """
    training_features(x, origin=origin, offset=offset)


def training_features(x: np.ndarray, *, origin: str, offset: int = 0) -> np.ndarray:
    """``x`` as :data:`TRAINING_DTYPE` (no copy when it is already), checked finite.

    See :func:`check_finite`; integer and bool features always fit.
    """
    with np.errstate(over="ignore"):  # overflow to Inf is what is checked for below
        converted = np.asarray(x, dtype=TRAINING_DTYPE)
    if x.dtype.kind != "f":
        return converted
    finite = np.isfinite(converted.reshape(len(x), -1)).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        column = int(np.argmin(np.isfinite(converted[row].reshape(-1))))
        value = np.asarray(x[row]).reshape(-1)[column]
        where = f"{origin}: example {offset + row}"
        if np.isfinite(value):
            limit = f"|x| <= {np.finfo(TRAINING_DTYPE).max:.3g}"
            raise DataError(
                f"{where} holds {value}, beyond the range of {TRAINING_DTYPE}, the dtype "
                f"features are trained in ({limit}); rescale the features",
                public=f"{where} holds a value beyond the range of {TRAINING_DTYPE}, the "
                f"dtype features are trained in ({limit}); rescale the features",
            )
        raise DataError(
            f"{where} holds {value} (features must be finite)",
            public=f"{where} holds a non-finite value (features must be finite)",
        )
    return converted


def fits_training_dtype(value: float) -> bool:
    """Whether the finite number ``value`` stays finite as :data:`TRAINING_DTYPE`."""
    with np.errstate(over="ignore"):
        return bool(np.isfinite(TRAINING_DTYPE.type(value)))


def check_class_count(num_classes: int, *, num_examples: int, origin: str) -> None:
    """Refuse a class count inferred from labels (largest label + 1) that is implausible.

    More classes than examples, or more than :data:`MAX_INFERRED_CLASSES`, means a
    stray label (one label of 1e9 would make the model's output layer 1e9 wide); it is
    refused before anything is allocated for it, suggesting run-config ``num-classes``.
    """
    if num_classes <= min(num_examples, MAX_INFERRED_CLASSES):
        return
    advice = (
        "if the labels are right, set run-config 'num-classes' to the class count "
        "(labels 0..num-classes-1)"
    )
    raise DataError(
        f"{origin}: the largest label implies {num_classes} classes, more than the "
        f"{num_examples} examples or {MAX_INFERRED_CLASSES} (the most inferred from "
        f"labels); {advice}",
        public=f"{origin}: the largest label implies more classes than the {num_examples} "
        f"examples or {MAX_INFERRED_CLASSES} (the most inferred from labels); {advice}",
    )


def check_labels(y: np.ndarray, *, origin: str, num_classes: int = 0) -> np.ndarray:
    """Labels as int64 in ``0 .. num_classes - 1`` (any non-negative value when 0).

    Float labels are accepted when they hold whole numbers (as CSV readers produce).
    The message names the index of the first offending label.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{origin}: labels have shape {y.shape}; expected [N] (one per example)")
    if y.dtype.kind not in "biuf":
        raise DataError(f"{origin}: labels have dtype {y.dtype}; they must be integers")
    if y.dtype.kind == "f":
        whole = np.isfinite(y) & (y == np.round(y))
        if not whole.all():
            index = int(np.argmin(whole))
            raise DataError(
                f"{origin}: label {index} is {y[index]}, not an integer",
                public=f"{origin}: label {index} is not an integer",
            )
    labels = y.astype(np.int64)
    if len(labels) and labels.min() < 0:
        index = int(np.argmin(labels))
        raise DataError(
            f"{origin}: label {index} is {labels[index]}; labels must be >= 0",
            public=f"{origin}: label {index} is negative; labels must be >= 0",
        )
    if num_classes and len(labels) and labels.max() >= num_classes:
        index = int(np.argmax(labels))
        raise DataError(
            f"{origin}: label {index} is {labels[index]}, outside 0..{num_classes - 1} "
            f"(run-config num-classes = {num_classes})",
            public=f"{origin}: label {index} is outside 0..{num_classes - 1} "
            f"(run-config num-classes = {num_classes})",
        )
    return labels


def check_lengths(num_x: int, num_y: int, *, origin: str) -> None:
    """One label per example."""
    if num_x != num_y:
        raise DataError(f"{origin}: {num_x} examples but {num_y} labels; they must match")


def check_trainable(
    num_examples: int, *, batch_size: int, dp: bool, delta: float, origin: str
) -> None:
    """Refuse a client dataset too small for private training.

    fedmodel samples each example with rate ``q = 1 / ceil(N / B)`` (Opacus's rule),
    which is at most 1 by construction; for ``N < B`` it is 1, and the expected batch
    ``B / N`` of the dataset would be above 1: every step then sees every record and the
    privacy amplification by subsampling that the accountant assumes for batch size
    ``B`` is gone. "Too small" therefore means ``N < batch-size`` under DP. δ must also
    be below ``1 / N`` (:func:`fedmodel.privacy.delta.check_delta`).
    """
    if num_examples < 1:
        raise DataError(f"{origin}: the dataset is empty (0 examples)")
    if not dp:
        return
    if num_examples < batch_size:
        raise DataError(
            f"{origin}: {num_examples} examples is fewer than batch-size {batch_size}: under "
            f"DP the sampling rate batch-size/N = {batch_size / num_examples:.3g} would be "
            "above 1; lower run-config 'batch-size' or give this client more data"
        )
    try:
        check_delta(delta, num_examples=num_examples, where=origin)
    except ConfigError as error:
        # A client's data, not only the run config, decides it: reported as its data's.
        raise DataError(str(error)) from error
