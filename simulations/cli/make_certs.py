"""``fedmodel make-certs``: a SuperLink TLS certificate for the given hosts, and its CA."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``make-certs`` to ``fedmodel``'s subcommands."""
    certs = commands.add_parser(
        "make-certs",
        help="make a SuperLink TLS certificate for given hosts, signed by a new CA or by "
        "an existing one (--ca-dir)",
    )
    certs.set_defaults(run=run)
    certs.add_argument(
        "--out",
        required=True,
        help="folder (created 0700) for server.pem, server.key, ca.crt and a new CA's ca.key",
    )
    certs.add_argument(
        "--host",
        dest="hosts",
        action="append",
        required=True,
        help="a name or IP address the SuperLink is reached at (repeat for several)",
    )
    certs.add_argument(
        "--days", type=int, default=90, help="server certificate validity in days (default 90)"
    )
    certs.add_argument(
        "--ca-days", type=int, default=3650, help="a new CA's validity in days (default 3650)"
    )
    certs.add_argument(
        "--ca-dir",
        help="sign with the CA in this folder (its ca.crt and ca.key) instead of a new one: "
        "rotate the server certificate while every node keeps trusting the same CA",
    )
    certs.add_argument(
        "--ca-passphrase-file",
        help="encrypt a new ca.key with the passphrase in this file (one line), or decrypt "
        "the --ca-dir's; default: the environment variable FEDMODEL_CA_PASSPHRASE if set, "
        "else an unencrypted ca.key",
    )
    certs.add_argument("--overwrite", action="store_true", help="replace existing files")


def run(args: argparse.Namespace) -> int:
    """Write the files and say where each goes."""
    from server.deployment.certificates import PASSPHRASE_ENV, make_certificates

    passphrase = _passphrase(args.ca_passphrase_file, PASSPHRASE_ENV)
    paths = make_certificates(
        args.out,
        hosts=args.hosts,
        days=args.days,
        ca_days=args.ca_days,
        ca_dir=args.ca_dir,
        ca_passphrase=passphrase,
        overwrite=args.overwrite,
    )
    print(f"CA certificate:     {paths.ca_cert}  (give to SuperNodes and the flwr CLI)")
    if paths.ca_key is not None:
        state = "encrypted" if passphrase else "unencrypted: consider --ca-passphrase-file"
        print(f"CA private key:     {paths.ca_key}  (keep offline; {state})")
    else:
        print(f"CA private key:     kept in {args.ca_dir} (not copied)")
    print(f"server certificate: {paths.server_cert}  (valid {args.days} days)")
    print(f"server private key: {paths.server_key}")
    if "127.0.0.1" not in args.hosts:
        print(
            "note: without --host 127.0.0.1 a SuperLink on 0.0.0.0 or 127.0.0.1 cannot "
            "start its ServerApps (its launcher connects over loopback, with TLS)"
        )
    return 0


def _passphrase(path: str | None, env_var: str) -> bytes | None:
    """The passphrase from ``path`` (first line) or from ``env_var``; ``None`` for neither."""
    if path is not None:
        lines = Path(path).read_bytes().splitlines()
        value = lines[0] if lines else b""
        if not value:
            raise ValueError(f"--ca-passphrase-file {path}: the file's first line is empty")
        return value
    value = os.environ.get(env_var)
    if value is not None and not value:
        raise ValueError(f"${env_var} is set but empty")
    return value.encode() if value else None
