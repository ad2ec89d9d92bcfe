"""NumPy sources: an ``.npz`` archive, or a folder holding ``x.npy`` and ``y.npy``.

Array names come from the run-config keys ``x-key`` and ``y-key``. Large arrays stay
on disk and are read on demand where the format allows it: always for ``.npy`` files,
and for ``.npz`` members saved uncompressed (``np.savez``). A member of
``np.savez_compressed`` must be decompressed into memory, so for big data use a NumPy
folder or ``np.savez``.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np

from fedmodel.data.sources.arrays import DiskArray, in_memory, labelled_from_arrays, map_npy
from fedmodel.data.sources.base import DataOptions, LabelledData
from fedmodel.data.sources.validation import DataError

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length


def load_npz(path: Path, *, options: DataOptions) -> tuple[LabelledData, tuple[int, ...]]:
    """Features ``x-key`` and labels ``y-key`` of the archive at ``path``."""
    origin = str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(
            f"{origin}: cannot read as .npz (a NumPy zip archive): {error}",
            public=f"{origin}: cannot read as .npz (a NumPy zip archive): "
            f"{type(error).__name__}",
        ) from error
    arrays = {}
    for key in (options.x_key, options.y_key):
        info = members.get(f"{key}.npy")
        if info is None:
            found = sorted(name.removesuffix(".npy") for name in members)
            raise DataError(
                f"{origin}: has no array {key!r} (arrays found: {found}); set run-config "
                f"'x-key' and 'y-key' to the names of the features and labels"
            )
        arrays[key] = _member(path, info, name=f"{origin}[{key!r}]")
    return labelled_from_arrays(
        arrays[options.x_key],
        in_memory(arrays[options.y_key]),
        origin=origin,
        num_classes=options.num_classes,
        x_name=f"{origin}[{options.x_key!r}]",
        y_name=f"{origin}[{options.y_key!r}]",
    )


def load_npy_folder(path: Path, *, options: DataOptions) -> tuple[LabelledData, tuple[int, ...]]:
    """Features ``<x-key>.npy`` and labels ``<y-key>.npy`` of the folder at ``path``."""
    files = {key: path / f"{key}.npy" for key in (options.x_key, options.y_key)}
    for file in files.values():
        if not file.is_file():
            raise DataError(
                f"{file}: missing (a NumPy folder holds {files[options.x_key].name} "
                f"and {files[options.y_key].name})"
            )
    x_name, y_name = str(files[options.x_key]), str(files[options.y_key])
    x = map_npy(files[options.x_key], name=x_name)
    y = in_memory(map_npy(files[options.y_key], name=y_name))
    return labelled_from_arrays(
        x, y, origin=str(path), num_classes=options.num_classes, x_name=x_name, y_name=y_name
    )


def _member(path: Path, info: zipfile.ZipInfo, *, name: str) -> np.ndarray | DiskArray:
    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as file:
            file.seek(info.header_offset)
            signature, name_length, extra_length = _LOCAL_HEADER.unpack(
                file.read(_LOCAL_HEADER.size)
            )
        if signature != b"PK\x03\x04":
            raise DataError(f"{name}: corrupt archive (bad local header)")
        offset = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
        return map_npy(path, offset=offset, name=name)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return archive[info.filename.removesuffix(".npy")]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        if "allow_pickle" in str(error):
            raise DataError(
                f"{name}: holds Python objects; features and labels must be numeric arrays"
            ) from error
        raise DataError(
            f"{name}: cannot read: {error}", public=f"{name}: cannot read: {type(error).__name__}"
        ) from error
