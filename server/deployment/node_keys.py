"""SuperNode authentication keys: an EC key pair in the OpenSSH formats Flower reads.

With ``flower-superlink --enable-supernode-auth`` only SuperNodes whose public key was
registered (``flwr supernode register <key>.pub``) may connect; each SuperNode proves
its identity with ``flower-supernode --auth-supernode-private-key <key>``. Flower reads
both keys in OpenSSH format and requires a NIST curve; ``ssh-keygen -t ecdsa -b 384``
makes the same files where OpenSSH is installed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from server.deployment.private_files import PRIVATE_FILE, PUBLIC_FILE, make_private_dir, write_file


@dataclass(frozen=True)
class NodeKeyPaths:
    """Where a SuperNode's key pair was written."""

    private_key: Path
    public_key: Path


def make_node_keys(
    out_dir: str | os.PathLike[str], *, name: str, overwrite: bool = False
) -> NodeKeyPaths:
    """Write ``<out_dir>/<name>`` (private, mode 0600) and ``<out_dir>/<name>.pub`` (0644).

    ``out_dir`` is created ``0700``; the modes hold whatever the umask.

    Parameters
    ----------
    out_dir : path
        Folder for the two files (created if missing).
    name : str
        File name of the private key, e.g. ``"node-0"``.
    overwrite : bool
        Replace existing files (otherwise an existing file is an error).
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"name must be a plain file name, got {name!r}")
    out = Path(out_dir)
    paths = NodeKeyPaths(private_key=out / name, public_key=out / f"{name}.pub")
    existing = [str(p) for p in vars(paths).values() if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        raise FileExistsError(f"refusing to overwrite {', '.join(existing)} (use --overwrite)")
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    make_private_dir(out)
    write_file(paths.private_key, private, mode=PRIVATE_FILE)
    write_file(paths.public_key, public + b"\n", mode=PUBLIC_FILE)
    return paths
