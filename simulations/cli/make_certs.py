"""``fedmodel make-certs``: a CA and a SuperLink TLS certificate for the given hosts."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``make-certs`` to ``fedmodel``'s subcommands."""
    certs = commands.add_parser(
        "make-certs", help="make a CA and a SuperLink TLS certificate for given hosts"
    )
    certs.set_defaults(run=run)
    certs.add_argument(
        "--out", required=True, help="folder for ca.crt, ca.key, server.pem, server.key"
    )
    certs.add_argument(
        "--host",
        dest="hosts",
        action="append",
        required=True,
        help="a name or IP address the SuperLink is reached at (repeat for several)",
    )
    certs.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    certs.add_argument("--overwrite", action="store_true", help="replace existing files")


def run(args: argparse.Namespace) -> int:
    """Write the four files and say where each goes."""
    from server.deployment.certificates import make_certificates

    paths = make_certificates(args.out, hosts=args.hosts, days=args.days, overwrite=args.overwrite)
    print(f"CA certificate:     {paths.ca_cert}  (give to SuperNodes and the flwr CLI)")
    print(f"CA private key:     {paths.ca_key}  (keep offline)")
    print(f"server certificate: {paths.server_cert}")
    print(f"server private key: {paths.server_key}")
    if "127.0.0.1" not in args.hosts:
        print(
            "note: without --host 127.0.0.1 a SuperLink on 0.0.0.0 or 127.0.0.1 cannot "
            "start its ServerApps (its launcher connects over loopback, with TLS)"
        )
    return 0
