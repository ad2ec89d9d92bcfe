"""``fedmodel deploy-local``: a job on Flower's deployment runtime, every node on loopback.

The parser only at import time (``fedmodel --help`` stays fast); the runtime is
imported when the command runs.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simulations.cli.common import CommandFailed, add_run_config_arguments, print_done

# Flower's own log lines in a `flwr run --stream` log (shown with --verbose):
# "\x1b[92mINFO \x1b[0m: ..." and their timestamped copies "11/28/2026 14:20:51:INFO:...".
_FLOWER_INFO = re.compile(r"^(\x1b\[\d+m)?(INFO|DEBUG)\b")
_FLOWER_COPY = re.compile(r"^\d\d/\d\d/\d{4} \d\d:\d\d:\d\d:[A-Z]+:")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``deploy-local`` to ``fedmodel``'s subcommands."""
    deploy = commands.add_parser(
        "deploy-local",
        help="run a job on Flower's deployment runtime on this machine: a SuperLink and one "
        "SuperNode per client, each a separate process on loopback (README, 'Deploy')",
    )
    deploy.set_defaults(run=run)
    deploy.add_argument(
        "--clients", type=int, help="number of SuperNodes (default 3; --resume: the run's)"
    )
    add_run_config_arguments(deploy)
    deploy.add_argument(
        "--work-dir",
        help="keep logs, certificates, keys and each node's state-dir (its privacy ledger) "
        "here; reuse it and the nodes' ε carries over (default: a temporary folder, deleted)",
    )
    deploy.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its checkpoint, with its own config; needs the "
        "--work-dir it ran in, whose nodes' state-dirs hold their ledgers (README, "
        "'Checkpoint and resume')",
    )
    deploy.add_argument("--tls", action="store_true", help="serve the SuperLink over TLS")
    deploy.add_argument(
        "--auth",
        action="store_true",
        help="SuperNode authentication: register each node's key (implies --tls)",
    )
    deploy.add_argument(
        "--cold",
        action="store_true",
        help="Flower's default: a fresh flwr-clientapp process per message (slower)",
    )
    deploy.add_argument("--timeout", type=float, help="stop the run after this many seconds")
    deploy.add_argument("--verbose", action="store_true", help="also show Flower's log")


def run(args: argparse.Namespace) -> int:
    """Validate, start the federation, run the job, stop every process; exit 0 if completed."""
    from fedmodel.config import ConfigError, RunConfig
    from fedmodel.results import default_run_dir
    from server.deployment.deploy_local import deploy_local
    from server.deployment.flower_processes import DeploymentError
    from simulations.client_data import check_delta

    started = time.perf_counter()
    if args.resume:
        values, clients = _resumed(args)
    else:
        values, clients = dict(args.overrides), 3 if args.clients is None else args.clients
        if args.run_dir:
            values["run-dir"] = str(Path(args.run_dir).resolve())
    if clients < 1:
        raise ConfigError(f"--clients = {clients} is out of range: must be >= 1")
    config = RunConfig.from_mapping(values)
    check_delta(config, num_clients=clients)
    if not config.run_dir:  # as `simulate`: under ./runs, not in the work folder
        values["run-dir"] = str(default_run_dir(config).resolve())

    # A temporary work folder holds the CA's and the SuperLink's private keys: it goes
    # however the command ends (failure, timeout, Ctrl-C, SIGTERM), not only on success.
    temporary = not args.work_dir
    work_dir = Path(tempfile.mkdtemp(prefix="fedmodel-")) if temporary else Path(args.work_dir)
    logs = (
        "deleted with the temporary work folder; keep them with --work-dir"
        if temporary
        else (str(work_dir / "logs"))
    )
    # `kill` of this command must stop the federation too, not orphan it.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        result = deploy_local(
            values,
            num_clients=clients,
            work_dir=work_dir,
            tls=args.tls,
            auth=args.auth,
            warm=not args.cold,
            timeout=args.timeout,
            on_line=_printer(verbose=args.verbose),
        )
    except KeyboardInterrupt as interrupt:
        interrupt.add_note(f"every process stopped (logs: {logs})")
        raise
    except DeploymentError as error:
        raise CommandFailed(f"deployment failed: {error} (logs: {logs})") from error
    finally:
        signal.signal(signal.SIGTERM, previous)
        if temporary:
            shutil.rmtree(work_dir, ignore_errors=True)
    if result.status != "finished:completed" or not result.rounds:
        raise CommandFailed(f"run {result.run_id} ended {result.status}; logs: {logs}")
    print_done(started, result.final, dp=config.dp, run_id=result.run_id, run_dir=result.run_dir)
    return 0


def _resumed(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """``--resume RUN_DIR``: the run's own config and node count; its ``--work-dir`` is needed."""
    from fedmodel.config import ConfigError
    from fedmodel.results.checkpoint import resumable_run

    if args.overrides or args.run_dir:
        raise ConfigError(
            "--resume continues the run with its own config; --set / --run-dir cannot change it"
        )
    if not args.work_dir:
        raise ConfigError(
            "--resume needs the --work-dir the run used: its nodes' state-dirs hold their "
            "privacy ledgers, and fresh nodes would start again at ε = 0"
        )
    run_config, document = resumable_run(args.resume)
    clients = int(document.get("num_nodes", 0))
    if args.clients is not None and args.clients != clients:
        raise ConfigError(
            f"--clients = {args.clients}, but the run in {args.resume} has {clients} nodes"
        )
    values = {**run_config, "resume": True, "run-dir": str(Path(args.resume).resolve())}
    return values, clients


def _printer(*, verbose: bool) -> Callable[[str], None]:
    def show(line: str) -> None:
        if verbose or not (_FLOWER_INFO.match(line) or _FLOWER_COPY.match(line)):
            print(line, end="" if line.endswith("\n") else "\n", flush=True)

    return show


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
