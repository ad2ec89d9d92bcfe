"""``fedmodel simulate``: one job on this machine, or with ``--config`` an experiment file."""

from __future__ import annotations

import argparse
import time
from typing import Any

from simulations.cli.common import add_run_config_arguments, print_done
from simulations.engines import ENGINES


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``simulate`` to ``fedmodel``'s subcommands."""
    simulate = commands.add_parser(
        "simulate", help="run a federated job in this process (ServerApp + ClientApps)"
    )
    simulate.set_defaults(run=run)
    simulate.add_argument(
        "--config",
        metavar="EXPERIMENT.toml",
        help="run an experiment file: one run or a grid (see simulations/experiments/)",
    )
    simulate.add_argument(
        "--clients", type=int, help="number of clients (default 10, or the experiment file's)"
    )
    add_run_config_arguments(simulate)
    simulate.add_argument(
        "--engine",
        choices=ENGINES,
        default="inprocess",
        help="inprocess (default); ray: Flower's Simulation Engine via a local SuperLink "
        "(set RAY_ADDRESS to use a running Ray cluster, README, 'Simulate at scale'); "
        "batched: each round's clients trained at once (README, 'Batched engine'); "
        "auto: batched where it is faster",
    )
    simulate.add_argument(
        "--workers",
        type=int,
        default=0,
        help="train clients in N worker processes (ray: N actors); default 0: in this process",
    )
    simulate.add_argument(
        "--gpus-per-client",
        type=float,
        default=0.0,
        metavar="G",
        help="ray: GPUs Ray reserves per client actor (Flower's client-resources-num-gpus); "
        "a fraction shares a GPU, e.g. 0.25: four clients per GPU (README, 'GPU')",
    )
    simulate.add_argument(
        "--noise-source",
        choices=["seeded", "secure"],
        default="seeded",
        help="where simulated nodes draw DP noise and batches: seeded (reproducible, default) "
        "or secure (ChaCha20 from os.urandom, as a deployed node; inprocess engine)",
    )
    simulate.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its checkpoint, with its own config and "
        "clients (README, 'Checkpoint and resume')",
    )
    simulate.add_argument("--verbose", action="store_true", help="also show Flower's log")
    simulate.add_argument(
        "--dry-run", action="store_true", help="with --config: validate and list the runs only"
    )
    simulate.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    simulate.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it shows only on a terminal)"
    )


def run(args: argparse.Namespace) -> int:
    """Run one job and print its closing line (exit 0), or the experiment ``--config``."""
    if args.config and not args.resume:
        return _experiment(args)
    from fedmodel.config import RunConfig
    from fedmodel.results import default_run_dir
    from simulations.progress import RoundProgress
    from simulations.simulate import simulate

    started = time.perf_counter()
    num_clients = args.clients
    if args.resume:
        values, num_clients = _resumed(args)
    else:
        values = dict(args.overrides)
        if args.run_dir:
            values["run-dir"] = args.run_dir
    config = RunConfig.from_mapping(values)
    if not config.run_dir:  # fixed here so the progress bar knows which folder to follow
        config = config.replace(run_dir=str(default_run_dir(config)))
    with RoundProgress(run_dir=config.run_dir, config=config, enabled=not args.no_progress):
        result = simulate(
            config,
            num_clients=num_clients,
            verbose=args.verbose,
            workers=args.workers,
            engine=args.engine,
            noise_source=args.noise_source,
            gpus_per_client=args.gpus_per_client,
        )
    if not args.no_plots:
        from simulations.plots import plot_run

        print(f"plots: {plot_run(result.run_dir)}")
    print_done(started, result.final, dp=config.dp)
    return 0


def _resumed(args: argparse.Namespace) -> tuple[dict[str, Any], int | None]:
    """``--resume RUN_DIR``: the run's own config (from its ``config.json``) and clients."""
    from fedmodel.config import ConfigError
    from fedmodel.results.checkpoint import resumable_run

    given = [
        flag
        for flag, value in (
            ("--config", args.config),
            ("--set", args.overrides),
            ("--run-dir", args.run_dir),
        )
        if value
    ]
    if given:
        raise ConfigError(
            f"--resume continues the run with its own config; {', '.join(given)} cannot change it"
        )
    run_config, document = resumable_run(args.resume)
    num_nodes = document.get("num_nodes")
    if args.clients is not None and args.clients != num_nodes:
        raise ConfigError(
            f"--clients = {args.clients}, but the run in {args.resume} has {num_nodes} clients"
        )
    return {**run_config, "resume": True, "run-dir": args.resume}, num_nodes


def _experiment(args: argparse.Namespace) -> int:
    """``--config FILE``: validate the whole grid, then run it; exit 1 if a run failed."""
    from simulations.experiments.runner import run_experiment
    from simulations.experiments.spec import load_experiment

    if args.gpus_per_client:
        from fedmodel.config import ConfigError

        # Not silently dropped: the experiment runner has no GPU share to pass on.
        raise ConfigError("--gpus-per-client applies to a single run, not to --config experiments")
    experiment = load_experiment(args.config, overrides=dict(args.overrides), clients=args.clients)
    if args.dry_run:
        print(experiment.describe())
        return 0
    try:
        result = run_experiment(
            experiment,
            directory=args.run_dir,
            plots=not args.no_plots,
            progress=not args.no_progress,
            verbose=args.verbose,
            engine=args.engine,
            workers=args.workers,
        )
    except KeyboardInterrupt as interrupt:
        interrupt.add_note("the summary lists the runs that finished")
        raise
    return 1 if result.failed else 0
