"""Durable, atomic file writes: a reader sees the old file or the new one, never a part.

Each file goes to a temporary file beside it (created exclusively, mode 0600 as
``tempfile`` makes them), is fsynced, renamed over the target, and the folder is
fsynced so the rename itself survives a power loss.

Why not ``tempfile.NamedTemporaryFile``: its Python-level work (random names, file
objects) cost ~0.4 ms a file, and a run writes a ledger per client every round. In the
run's write-behind thread that Python time also held the GIL the training thread needs
(each torch call releases and retakes it), slowing the round it meant to hide from.
Plain ``os`` calls release the GIL for every system call and hold it for microseconds.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections.abc import Mapping
from pathlib import Path

_COUNTER = itertools.count()  # next() is atomic under the GIL: unique names per process
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def write_atomically(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Write ``data`` to ``path``: temporary file beside it, fsync, rename, fsync the folder."""
    write_all_atomically({Path(path): data})


def write_all_atomically(files: Mapping[Path, str | bytes]) -> None:
    """:func:`write_atomically` for many files, one fsync per folder for the renames.

    Every file's bytes are fsynced before any rename, then the files are renamed in the
    order given, then each folder is fsynced once: after it returns all are durable. A
    failure leaves no temporary file and renames nothing after it.
    """
    temporary: list[tuple[str, Path]] = []
    renamed = 0
    try:
        for path, data in files.items():
            payload = data.encode("utf-8") if isinstance(data, str) else data
            name = os.path.join(
                path.parent,
                f".{path.name}.{os.getpid()}-{threading.get_ident()}-{next(_COUNTER)}.tmp",
            )
            descriptor = os.open(name, _FLAGS, 0o600)
            temporary.append((name, path))
            try:
                view = memoryview(payload)
                while view:  # os.write may write less than asked
                    view = view[os.write(descriptor, view) :]
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        for name, path in temporary:
            os.replace(name, path)
            renamed += 1
    finally:
        for name, _ in temporary[renamed:]:  # a write failed: leave no temporary file
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
    for folder in dict.fromkeys(path.parent for path in files):
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
