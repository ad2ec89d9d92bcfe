"""Folders and files only their owner can read, whatever the umask.

A deployment's folders hold private keys, logs that name nodes and runs, and each node's
privacy ledger; an operator expects them ``0700`` (folders) and ``0600`` (files), with
only public certificates and public keys ``0644``. ``os.mkdir(path, 0o700)`` and
``os.open(..., 0o600)`` are masked by the umask only towards *fewer* bits, but a file that
already exists keeps its mode, so every helper here also sets the mode explicitly
(``fchmod`` / ``chmod``). The standard library has the pieces but no helper doing both.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_DIR, PRIVATE_FILE, PUBLIC_FILE = 0o700, 0o600, 0o644
# What a Flower process started by a deployment may create: owner only.
PRIVATE_UMASK = 0o077


def make_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and missing parents) as ``0700`` folders; return it.

    Folders that already exist keep their mode: they may be the user's own (``$HOME``, a
    shared mount), and only what this call creates is ours to restrict.
    """
    path = Path(path)
    missing: list[Path] = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:  # made meanwhile by another process: not ours
            continue
        os.chmod(folder, PRIVATE_DIR)
    if not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a folder")
    return path


def write_file(path: Path, data: bytes, *, mode: int = PRIVATE_FILE) -> None:
    """Write ``data`` to a fresh ``path`` with exactly ``mode`` (replacing any old file).

    ``O_EXCL`` after the unlink: a symbolic link planted at ``path`` is never followed.
    """
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(file.fileno(), mode)
        file.write(data)


def open_private_log(path: Path) -> int:
    """An ``O_APPEND`` descriptor of the log ``path`` (``0600``, its folder ``0700``)."""
    make_private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, PRIVATE_FILE)
    os.fchmod(fd, PRIVATE_FILE)
    return fd
