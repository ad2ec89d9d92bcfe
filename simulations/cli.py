"""The ``fedmodel`` command."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import tomllib
from typing import Any

from fedmodel.config import ConfigError, RunConfig


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse ``key=value``; the value is TOML (``3``, ``0.5``, ``true``), bare words are strings."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, raw = (part.strip() for part in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def add_run_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (repeatable) and ``--run-dir``: every command that runs a job."""
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        type=parse_assignment,
        action="append",
        default=[],
        help="override a run-config key, e.g. --set num-server-rounds=5 --set model=cnn",
    )
    parser.add_argument("--run-dir", help="run folder to write (default runs/<time>-...)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedmodel", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    simulate = commands.add_parser(
        "simulate", help="run a federated job in this process (ServerApp + ClientApps)"
    )
    simulate.add_argument(
        "--config",
        metavar="EXPERIMENT.toml",
        help="run an experiment file: one run or a grid (see simulations/experiments.py)",
    )
    simulate.add_argument(
        "--clients", type=int, help="number of clients (default 10, or the experiment file's)"
    )
    add_run_config_arguments(simulate)
    simulate.add_argument(
        "--engine",
        choices=["inprocess", "ray"],
        default="inprocess",
        help="inprocess (default) or ray: Flower's Simulation Engine via a local SuperLink; "
        "set RAY_ADDRESS to use a running Ray cluster (README, 'Simulate at scale')",
    )
    simulate.add_argument(
        "--workers",
        type=int,
        default=0,
        help="train clients in N worker processes (ray: N actors); default 0: in this process",
    )
    simulate.add_argument(
        "--noise-source",
        choices=["seeded", "secure"],
        default="seeded",
        help="where simulated nodes draw DP noise and batches: seeded (reproducible, default) "
        "or secure (ChaCha20 from os.urandom, as a deployed node; inprocess engine)",
    )
    simulate.add_argument("--verbose", action="store_true", help="also show Flower's log")
    simulate.add_argument(
        "--dry-run", action="store_true", help="with --config: validate and list the runs only"
    )
    simulate.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    simulate.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it shows only on a terminal)"
    )

    download = commands.add_parser("download", help="download MNIST or Fashion-MNIST (checksummed)")
    download.add_argument("dataset", choices=["mnist", "fashion-mnist"])
    download.add_argument("--data-dir", required=True, help="folder to write <dataset>.npz into")

    from server.deployment.cli import add_commands  # parsers only: deploy-local, make-certs, ...

    add_commands(commands, add_run_config_arguments=add_run_config_arguments)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    if args.command == "download":
        from fedmodel.data.mnist import download

        print(f"wrote {download(args.dataset, data_dir=args.data_dir)}")
        return 0
    if args.command in ("deploy-local", "make-certs", "make-node-key"):
        from server.deployment.cli import run

        return run(args)
    return _simulate(args)


def _simulate(args: argparse.Namespace) -> int:
    if args.config:
        from simulations.experiments import run_from_command_line

        return run_from_command_line(args)
    from fedmodel.data.sources import DataError
    from fedmodel.results import default_run_dir
    from simulations.progress import RoundProgress
    from simulations.simulate import simulate

    started = time.perf_counter()
    values = dict(args.overrides)
    if args.run_dir:
        values["run-dir"] = args.run_dir
    try:
        config = RunConfig.from_mapping(values)
        if not config.run_dir:  # fixed here so the progress bar knows which folder to follow
            config = config.replace(run_dir=str(default_run_dir(config)))
        with RoundProgress(run_dir=config.run_dir, config=config, enabled=not args.no_progress):
            result = simulate(
                config,
                num_clients=args.clients,
                verbose=args.verbose,
                workers=args.workers,
                engine=args.engine,
                noise_source=args.noise_source,
            )
    except ConfigError as error:
        print(f"fedmodel: invalid config: {error}", file=sys.stderr)
        return 2
    except DataError as error:
        print(f"fedmodel: bad data: {error}", file=sys.stderr)
        return 2
    if not args.no_plots:
        from simulations.plots import plot_run

        print(f"plots: {plot_run(result.run_dir)}")
    final = result.final
    accuracy = f"test accuracy {final.test_accuracy:.4f}"
    if math.isnan(final.test_accuracy):  # no central test set (custom data without test-data)
        accuracy = f"client accuracy {final.client_accuracy:.4f} (no central test set)"
    print(
        f"done in {time.perf_counter() - started:.1f} s: {accuracy}"
        + (f", max client ε {final.epsilon_max:.3f}" if config.dp else ", DP off")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
