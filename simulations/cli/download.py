"""``fedmodel download``: MNIST or Fashion-MNIST from the official files, checksummed."""

from __future__ import annotations

import argparse

from simulations.cli.common import CommandFailed


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``download`` to ``fedmodel``'s subcommands."""
    download = commands.add_parser("download", help="download MNIST or Fashion-MNIST (checksummed)")
    download.set_defaults(run=run)
    download.add_argument("dataset", choices=["mnist", "fashion-mnist"])
    download.add_argument("--data-dir", required=True, help="folder to write <dataset>.npz into")


def run(args: argparse.Namespace) -> int:
    """Download, verify and write ``<data-dir>/<dataset>.npz``; nothing is written on failure."""
    from fedmodel.data.mnist import download

    try:
        path = download(args.dataset, data_dir=args.data_dir)
    except (OSError, ValueError) as error:  # network, disk, checksum
        raise CommandFailed(f"download failed: {error}") from error
    print(f"wrote {path}")
    return 0
