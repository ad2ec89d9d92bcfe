"""MNIST and Fashion-MNIST: read from a local ``.npz``, or download the official files.

A local copy is ``<data-dir>/mnist.npz`` (or ``fashion_mnist.npz``) holding the uint8
arrays ``x_train [60000, 28, 28]``, ``y_train``, ``x_test [10000, 28, 28]``, ``y_test``.
:func:`download` writes that file from the official IDX files, each checked against the
MD5 of the official uncompressed file before anything is written. An official file
already in ``<data-dir>/<name>/`` (placed by hand on a machine without network) is read
from there instead of downloaded, and checked the same way.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from fedmodel.atomic_files import write_atomically
from fedmodel.data.splits import DatasetSplits, tensor_dataset

# name -> (mirror, {array: (file, md5 of the uncompressed IDX file)})
SOURCES: dict[str, tuple[str, dict[str, tuple[str, str]]]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        {
            "x_train": ("train-images-idx3-ubyte.gz", "6bbc9ace898e44ae57da46a324031adb"),
            "y_train": ("train-labels-idx1-ubyte.gz", "a25bea736e30d166cdddb491f175f624"),
            "x_test": ("t10k-images-idx3-ubyte.gz", "2646ac647ad5339dbf082846283269ea"),
            "y_test": ("t10k-labels-idx1-ubyte.gz", "27ae3e4e09519cfbb04c329615203637"),
        },
    ),
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        {
            "x_train": ("train-images-idx3-ubyte.gz", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
            "y_train": ("train-labels-idx1-ubyte.gz", "9018921c3c673c538a1fc5bad174d6f9"),
            "x_test": ("t10k-images-idx3-ubyte.gz", "8181f5470baa50b63fa0f6fddb340f0a"),
            "y_test": ("t10k-labels-idx1-ubyte.gz", "15d484375f8d13e6eb1aabb0c3f46965"),
        },
    ),
}




class DownloadError(OSError):
    """The official files cannot be downloaded; the message says how to place them by hand."""


def archive_path(name: str, data_dir: str | os.PathLike[str]) -> Path:
    """Where the ``.npz`` of dataset ``name`` lives in ``data_dir``."""
    return Path(data_dir) / f"{name.replace('-', '_')}.npz"


def official_files_dir(name: str, data_dir: str | os.PathLike[str]) -> Path:
    """Where :func:`download` looks for official files of ``name`` placed by hand."""
    return Path(data_dir) / name


def load_mnist_splits(name: str, *, data_dir: str | os.PathLike[str]) -> DatasetSplits:
    """Load ``mnist`` or ``fashion-mnist`` from ``data_dir``; pixels scaled to [0, 1]."""
    if name not in SOURCES:
        raise ValueError(f"unknown dataset {name!r}: must be one of {', '.join(SOURCES)}")
    path = archive_path(name, data_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"{name}: no {path.name} in data-dir {str(data_dir)!r}; "
            f"get it with `fedmodel download {name} --data-dir {data_dir or 'DIR'}`"
        )
    with np.load(path) as arrays:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(arrays.files)
        if missing:
            raise ValueError(f"{path}: missing arrays {sorted(missing)}")
        x_train, y_train = arrays["x_train"], arrays["y_train"]
        x_test, y_test = arrays["x_test"], arrays["y_test"]
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.ndim != 3 or x.shape[1:] != (28, 28) or len(x) != len(y):
            raise ValueError(
                f"{path}: x_{split} must be [N, 28, 28] with N labels, "
                f"got x {x.shape} and y {y.shape}"
            )
    return DatasetSplits(
        train=tensor_dataset(x_train[:, None] / np.float32(255.0), y_train),
        test=tensor_dataset(x_test[:, None] / np.float32(255.0), y_test),
        num_classes=10,
        input_shape=(1, 28, 28),
    )


def download(name: str, *, data_dir: str | os.PathLike[str], timeout: float = 60.0) -> Path:
    """Download the official files of ``name``, verify them and write the ``.npz``.

    Files already in :func:`official_files_dir` are read from there instead. Nothing is
    written unless all four files pass their checksum. An unreachable mirror raises
    :class:`DownloadError`, whose message says how to place the files by hand.
    """
    if name not in SOURCES:
        raise ValueError(f"unknown dataset {name!r}: must be one of {', '.join(SOURCES)}")
    mirror, files = SOURCES[name]
    placed = official_files_dir(name, data_dir)
    arrays: dict[str, np.ndarray] = {}
    for key, (filename, md5) in files.items():
        local = placed / filename
        if local.is_file():
            origin, compressed = str(local), local.read_bytes()
        else:
            origin = mirror + filename
            compressed = _fetch(origin, timeout=timeout, name=name, data_dir=data_dir)
        raw = gzip.decompress(compressed)
        digest = hashlib.md5(raw).hexdigest()
        if digest != md5:
            raise ValueError(f"{origin}: checksum mismatch (md5 {digest}, expected {md5})")
        arrays[key] = parse_idx(raw)
    target = archive_path(name, data_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_atomically(target, buffer.getvalue())
    return target


def _fetch(url: str, *, timeout: float, name: str, data_dir: str | os.PathLike[str]) -> bytes:
    """The bytes at ``url``; a mirror that cannot be reached is a :class:`DownloadError`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            return response.read()
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        host = urllib.parse.urlsplit(url).netloc
        if isinstance(error, urllib.error.HTTPError):
            problem = f"{host} answered HTTP {error.code} for {url}"
        else:
            problem = f"cannot reach {host} ({getattr(error, 'reason', error)}) for {url}"
        mirror, files = SOURCES[name]
        filenames = ", ".join(filename for filename, _ in files.values())
        raise DownloadError(
            f"{problem}. Without network access, copy the official files {filenames} (from "
            f"{mirror}) into {official_files_dir(name, data_dir)}{os.sep} and run `fedmodel "
            f"download {name} --data-dir {data_dir}` again: each file is checked against "
            "its MD5 checksum before the .npz is written"
        ) from error


def parse_idx(raw: bytes) -> np.ndarray:
    """Decode an IDX file (big-endian header, then uint8 data) into an array."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError("not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    return data.reshape(dims)
