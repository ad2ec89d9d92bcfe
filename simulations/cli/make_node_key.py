"""``fedmodel make-node-key``: a SuperNode authentication key pair (OpenSSH, EC P-384)."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``make-node-key`` to ``fedmodel``'s subcommands."""
    key = commands.add_parser(
        "make-node-key", help="make a SuperNode authentication key pair (OpenSSH, EC P-384)"
    )
    key.set_defaults(run=run)
    key.add_argument("--out", required=True, help="folder for NAME and NAME.pub")
    key.add_argument("--name", required=True, help="file name of the private key, e.g. node-0")
    key.add_argument("--overwrite", action="store_true", help="replace existing files")


def run(args: argparse.Namespace) -> int:
    """Write the key pair and say which Flower command takes which file."""
    from server.deployment.node_keys import make_node_keys

    keys = make_node_keys(args.out, name=args.name, overwrite=args.overwrite)
    print(f"private key: {keys.private_key}  (flower-supernode --auth-supernode-private-key)")
    print(f"public key:  {keys.public_key}  (flwr supernode register)")
    return 0
