"""Python sources: a ``package.module:function`` loader, or dataset objects held in-process.

The loader is imported and called with no arguments; it returns a map-style torch
``Dataset`` whose items are ``(x, y)`` pairs (``x`` numeric, array-like or tensor, of
one shape; ``y`` an integer class id), or a ``(train, test)`` pair of such datasets.
Every item is read once to check it, so a bad example fails before training with its
index. Objects given to the Python API (``simulate(..., client_data=[...])``) are
*held* under a ``python-object:<n>`` name that the ClientApp resolves in the same
process (Flower's node configs carry strings, not objects).
"""

from __future__ import annotations

import importlib
import itertools
import re
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, TensorDataset

from fedmodel.data.sources.arrays import labelled_from_arrays
from fedmodel.data.sources.base import LabelledData
from fedmodel.data.sources.validation import (
    DataError,
    check_feature_dtype,
    check_finite,
    check_labels,
    check_shape,
)

T = TypeVar("T")
LOADER_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
HELD_PREFIX = "python-object:"

_held: dict[str, Any] = {}
_checked: dict[tuple[str, Any], Any] = {}  # (name, options) -> the checked source
_counter = itertools.count()


def is_loader_spec(spec: str) -> bool:
    """Whether ``spec`` reads as ``package.module:function``."""
    return bool(LOADER_PATTERN.match(spec))


def hold(obj: Any) -> str:
    """Keep ``obj`` (a Dataset or a (train, test) pair) in this process; return its name."""
    name = f"{HELD_PREFIX}{next(_counter)}"
    _held[name] = obj
    return name


def release(name: str) -> None:
    """Forget a held object and what was built from it."""
    _held.pop(name, None)
    for key in [key for key in _checked if key[0] == name]:
        del _checked[key]


def held_source(name: str, options: Any, build: Callable[[Any], T]) -> T:
    """``build(object held under name)``, computed once per options until released."""
    if name not in _held:
        raise DataError(
            f"{name}: no dataset object held under this name in this process (objects "
            "given to the Python API reach only clients run in the same process)"
        )
    if (name, options) not in _checked:
        _checked[name, options] = build(_held[name])
    return _checked[name, options]


def call_loader(spec: str) -> Any:
    """Import ``package.module:function`` and call it."""
    module_name, function_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - any import failure is the user's loader's
        raise DataError(
            f"{spec}: cannot import module {module_name!r}: {type(error).__name__}: {error}",
            public=f"{spec}: cannot import module {module_name!r}: {type(error).__name__}",
        ) from error
    function = getattr(module, function_name, None)
    if function is None:
        raise DataError(f"{spec}: module {module_name!r} has no attribute {function_name!r}")
    if not callable(function):
        raise DataError(f"{spec}: {function_name!r} is a {type(function).__name__}, not callable")
    try:
        return function()
    except Exception as error:  # noqa: BLE001 - report the loader's failure, named
        raise DataError(
            f"{spec}: calling it raised {type(error).__name__}: {error}",
            public=f"{spec}: calling it raised {type(error).__name__}",
        ) from error


def split_pair(value: Any, *, origin: str) -> tuple[Dataset, Dataset | None]:
    """A Dataset, or a (train, test) pair of them, as ``(train, test or None)``."""
    if _is_map_dataset(value):
        return value, None
    if isinstance(value, tuple | list) and len(value) == 2 and all(map(_is_map_dataset, value)):
        return value[0], value[1]
    raise DataError(
        f"{origin}: returned {_describe(value)}; expected a torch Dataset or a "
        "(train, test) pair of Datasets (map-style: __len__ and __getitem__)"
    )


def check_dataset(
    dataset: Dataset, *, origin: str, num_classes: int
) -> tuple[LabelledData, tuple[int, ...]]:
    """Read every item once, check it, and wrap the dataset to yield float32/int64 tensors."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        x, y = (_to_numpy(t, origin=origin) for t in dataset.tensors)
        return labelled_from_arrays(x, y, origin=origin, num_classes=num_classes)
    size = len(dataset)  # type: ignore[arg-type]
    if size == 0:
        raise DataError(f"{origin}: the dataset is empty (0 examples)")
    labels = np.empty(size, dtype=np.float64)
    shape: tuple[int, ...] | None = None
    for index in range(size):
        item = dataset[index]
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise DataError(f"{origin}: item {index} is {_describe(item)}; expected a pair (x, y)")
        x = _to_numpy(item[0], origin=f"{origin}, item {index}")[None]
        check_feature_dtype(x.dtype, origin=f"{origin}, item {index}")
        if shape is None:
            check_shape(x.shape, origin=f"{origin}, item {index}")
            shape = x.shape[1:]
        elif x.shape[1:] != shape:
            raise DataError(
                f"{origin}: item {index} has x of shape {x.shape[1:]} but item 0 has {shape}"
            )
        check_finite(x, origin=origin, offset=index)
        y = _to_numpy(item[1], origin=f"{origin}, item {index}")
        if y.shape != () or y.dtype.kind not in "biuf":
            raise DataError(
                f"{origin}: item {index} has label {item[1]!r}; expected one integer",
                public=f"{origin}: item {index} has a label of type {type(item[1]).__name__} "
                f"and shape {y.shape}; expected one integer",
            )
        labels[index] = y
    checked = check_labels(labels, origin=f"{origin} (labels)", num_classes=num_classes)
    assert shape is not None
    return LabelledData(_AsTensors(dataset), checked), tuple(int(n) for n in shape)


class _AsTensors(Dataset):
    """A user's dataset whose items come out as (float32 tensor, int64 tensor)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.dataset[index]
        return (
            torch.as_tensor(_to_numpy(x, origin=""), dtype=torch.float32),
            torch.as_tensor(int(_to_numpy(y, origin="")), dtype=torch.int64),
        )


def _to_numpy(value: Any, *, origin: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype in (torch.float16, torch.bfloat16):
            value = value.float()
        return value.numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as error:
        raise DataError(
            f"{origin}: cannot read {_describe(value)} as an array: {error}",
            public=f"{origin}: cannot read {_describe(value)} as an array: "
            f"{type(error).__name__}",
        ) from error


def _is_map_dataset(value: Any) -> bool:
    return (
        isinstance(value, Dataset)
        and not isinstance(value, IterableDataset)
        and hasattr(value, "__len__")
    )


def _describe(value: Any) -> str:
    kind = type(value).__name__
    return f"a {kind} of length {len(value)}" if isinstance(value, tuple | list) else f"a {kind}"
