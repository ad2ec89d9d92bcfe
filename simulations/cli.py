"""The ``fedmodel`` command."""

from __future__ import annotations

import argparse
import os
import sys
import time
import tomllib
from typing import Any

from fedmodel.config import ConfigError, RunConfig


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` with a TOML value (``3``, ``0.5``, ``true``, ``"cnn"``); bare words are strings."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, raw = (part.strip() for part in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedmodel", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    simulate = commands.add_parser(
        "simulate", help="run a federated job in this process (ServerApp + ClientApps)"
    )
    simulate.add_argument("--clients", type=int, default=10, help="number of clients (default 10)")
    simulate.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        type=parse_assignment,
        action="append",
        default=[],
        help="override a run-config key, e.g. --set num-server-rounds=5 --set model=cnn",
    )
    simulate.add_argument("--run-dir", help="where to write the run folder (default runs/<time>-...)")
    simulate.add_argument("--verbose", action="store_true", help="also show Flower's log")

    download = commands.add_parser("download", help="download MNIST or Fashion-MNIST (checksummed)")
    download.add_argument("dataset", choices=["mnist", "fashion-mnist"])
    download.add_argument("--data-dir", required=True, help="folder to write <dataset>.npz into")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    if args.command == "download":
        from fedmodel.data.mnist import download

        print(f"wrote {download(args.dataset, data_dir=args.data_dir)}")
        return 0
    return _simulate(args)


def _simulate(args: argparse.Namespace) -> int:
    from simulations.simulate import simulate

    started = time.perf_counter()
    values = dict(args.overrides)
    if args.run_dir:
        values["run-dir"] = args.run_dir
    try:
        config = RunConfig.from_mapping(values)
        result = simulate(config, num_clients=args.clients, verbose=args.verbose)
    except ConfigError as error:
        print(f"fedmodel: invalid config: {error}", file=sys.stderr)
        return 2
    final = result.final
    print(
        f"done in {time.perf_counter() - started:.1f} s: test accuracy {final.test_accuracy:.4f}"
        + (f", max client ε {final.epsilon_max:.3f}" if config.dp else ", DP off")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
