"""Feature and label arrays to a validated dataset; large arrays stay on disk.

An array of at least :data:`ON_DISK_MIN_BYTES` stored uncompressed (a ``.npy`` file, or
a member of an ``np.savez`` archive) is not loaded: a :class:`DiskArray` reads the rows
a batch draws, with positioned reads (``os.pread``), and its NaN/Inf check reads the
file once in chunks. Both go through the operating system's page cache, which stays
reclaimable, so a 1 GB client file does not need 1 GB of process memory.

Why not ``np.memmap``: every page a memory map touches counts towards the process's
resident memory, and current Linux kernels map whole page-cache folios (here about
1.4 MB per randomly drawn row), so a few Poisson-sampled batches already pull much of
the file into the process.
"""

from __future__ import annotations

import math
import os
from typing import BinaryIO

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from fedmodel.data.sources.base import LabelledData
from fedmodel.data.sources.validation import (
    DataError,
    check_feature_dtype,
    check_finite,
    check_labels,
    check_lengths,
    check_shape,
    training_features,
)

ON_DISK_MIN_BYTES = 64 * 2**20
CHUNK_BYTES = 4 * 2**20


class DiskArray:
    """A C-ordered array stored uncompressed at ``offset`` of the file ``path``.

    Rows are read on demand; nothing but one file descriptor is held. Safe to share
    across forked DataLoader workers (positioned reads share no file offset).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, offset: int, dtype: np.dtype, shape: tuple[int, ...]
    ) -> None:
        self.path = os.fspath(path)
        self.offset = offset
        self.dtype = np.dtype(dtype)
        self.shape = tuple(shape)
        self.row_values = math.prod(self.shape[1:])
        self._fd: int | None = None
        size = os.path.getsize(self.path)
        if offset + math.prod(self.shape) * self.dtype.itemsize > size:
            raise DataError(
                f"{self.path}: file is truncated (header says {self.shape}, {self.dtype})"
            )

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}  # a descriptor does not cross processes

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def rows(self, start: int, count: int) -> np.ndarray:
        """Rows ``start .. start + count - 1`` as an in-memory array."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        row_bytes = self.row_values * self.dtype.itemsize
        raw = os.pread(self._fd, count * row_bytes, self.offset + start * row_bytes)
        return np.frombuffer(raw, dtype=self.dtype).reshape(count, *self.shape[1:])


class ArrayDataset(Dataset):
    """Rows of a :class:`DiskArray` with in-memory labels, read when drawn."""

    def __init__(self, x: DiskArray, labels: np.ndarray) -> None:
        self.x = x
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.x.rows(int(index), 1)[0].astype(np.float32)
        return torch.from_numpy(features), torch.tensor(self.labels[index])


def map_npy(
    path: str | os.PathLike[str], *, offset: int = 0, name: str
) -> np.ndarray | DiskArray:
    """The ``.npy`` array stored at byte ``offset`` of ``path``.

    Left on disk (:class:`DiskArray`) when it holds at least :data:`ON_DISK_MIN_BYTES`,
    else read into memory. NumPy reads ``.npy`` files but not ``.npz`` members at an
    offset without loading them, hence this reader of the format's header
    (``numpy.lib.format``) at any offset.
    """
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            shape, fortran_order, dtype = _read_header(file)
            data_offset = file.tell()
            if dtype.hasobject:
                raise DataError(
                    f"{name}: holds Python objects (dtype {dtype}); features and labels "
                    "must be numeric arrays"
                )
            count = math.prod(shape)
            if count * dtype.itemsize < ON_DISK_MIN_BYTES:
                array = np.fromfile(file, dtype=dtype, count=count)
                if array.size != count:
                    raise DataError(f"{name}: file is truncated ({array.size} of {count} values)")
                return array.reshape(shape, order="F" if fortran_order else "C")
        if fortran_order and len(shape) > 1:
            raise DataError(
                f"{name}: is stored in Fortran order; reading rows on demand needs C order: "
                "save it with np.save(path, np.ascontiguousarray(x))"
            )
        return DiskArray(path, offset=data_offset, dtype=dtype, shape=shape)
    except (OSError, ValueError, EOFError) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(
            f"{name}: cannot read as a NumPy array: {error}",
            public=f"{name}: cannot read as a NumPy array: {type(error).__name__}",
        ) from error


def _read_header(file: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(file)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(file)
    return np.lib.format.read_array_header_2_0(file)


def in_memory(array: np.ndarray | DiskArray) -> np.ndarray:
    """The whole array in memory (for labels: 8 bytes an example)."""
    return array.rows(0, len(array)) if isinstance(array, DiskArray) else np.asarray(array)


def labelled_from_arrays(
    x: np.ndarray | DiskArray,
    y: np.ndarray,
    *,
    origin: str,
    num_classes: int,
    x_name: str | None = None,
    y_name: str | None = None,
) -> tuple[LabelledData, tuple[int, ...]]:
    """Validate features ``x`` ``[N, ...]`` and labels ``y`` ``[N]``; wrap them.

    Messages name ``x_name`` / ``y_name`` (default: ``origin`` with "(features)" or
    "(labels)"). In-memory features become a float32 ``TensorDataset``; features left
    on disk an :class:`ArrayDataset` that reads a row when it is drawn.
    """
    x_name = x_name or f"{origin} (features)"
    y_name = y_name or f"{origin} (labels)"
    check_feature_dtype(x.dtype, origin=x_name)
    check_shape(tuple(x.shape), origin=x_name)
    labels = check_labels(y, origin=y_name, num_classes=num_classes)
    check_lengths(len(x), len(labels), origin=origin)
    input_shape = tuple(int(n) for n in x.shape[1:])
    if isinstance(x, DiskArray):
        _check_finite_on_disk(x, origin=x_name)
        return LabelledData(ArrayDataset(x, labels), labels), input_shape
    features = training_features(x, origin=x_name)  # checked as float32, what training sees
    dataset = TensorDataset(torch.as_tensor(features), torch.as_tensor(labels))
    return LabelledData(dataset, labels), input_shape


def _check_finite_on_disk(x: DiskArray, *, origin: str) -> None:
    if x.dtype.kind != "f":
        return
    rows = max(1, CHUNK_BYTES // (x.row_values * x.dtype.itemsize))
    for start in range(0, len(x), rows):
        check_finite(x.rows(start, min(rows, len(x) - start)), origin=origin, offset=start)
