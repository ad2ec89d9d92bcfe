"""The deployment subcommands of ``fedmodel``: ``deploy-local``, ``make-certs``, ``make-node-key``.

Parsers only at import time (``fedmodel --help`` stays fast); each handler imports
what it needs.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

COMMANDS = ("deploy-local", "make-certs", "make-node-key")

# Flower's own log lines in a `flwr run --stream` log (shown with --verbose):
# "\x1b[92mINFO \x1b[0m: ..." and their timestamped copies "11/28/2026 14:20:51:INFO:...".
_FLOWER_INFO = re.compile(r"^(\x1b\[\d+m)?(INFO|DEBUG)\b")
_FLOWER_COPY = re.compile(r"^\d\d/\d\d/\d{4} \d\d:\d\d:\d\d:[A-Z]+:")


def add_commands(
    commands: argparse._SubParsersAction,
    *,
    add_run_config_arguments: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add the deployment subcommands to ``fedmodel``'s parser."""
    deploy = commands.add_parser(
        "deploy-local",
        help="run a job on Flower's deployment runtime on this machine: a SuperLink and one "
        "SuperNode per client, each a separate process on loopback (README, 'Deploy')",
    )
    deploy.add_argument("--clients", type=int, default=3, help="number of SuperNodes (default 3)")
    add_run_config_arguments(deploy)
    deploy.add_argument(
        "--work-dir",
        help="keep logs, certificates, keys and each node's state-dir (its privacy ledger) "
        "here; reuse it and the nodes' ε carries over (default: a temporary folder, deleted)",
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

    certs = commands.add_parser(
        "make-certs", help="make a CA and a SuperLink TLS certificate for given hosts"
    )
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

    key = commands.add_parser(
        "make-node-key", help="make a SuperNode authentication key pair (OpenSSH, EC P-384)"
    )
    key.add_argument("--out", required=True, help="folder for NAME and NAME.pub")
    key.add_argument("--name", required=True, help="file name of the private key, e.g. node-0")
    key.add_argument("--overwrite", action="store_true", help="replace existing files")


def run(args: argparse.Namespace) -> int:
    """Run the deployment subcommand ``args.command``."""
    if args.command == "make-certs":
        from server.deployment.certificates import make_certificates

        paths = make_certificates(
            args.out, hosts=args.hosts, days=args.days, overwrite=args.overwrite
        )
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
    if args.command == "make-node-key":
        from server.deployment.node_keys import make_node_keys

        keys = make_node_keys(args.out, name=args.name, overwrite=args.overwrite)
        print(f"private key: {keys.private_key}  (flower-supernode --auth-supernode-private-key)")
        print(f"public key:  {keys.public_key}  (flwr supernode register)")
        return 0
    return _deploy_local(args)


def _deploy_local(args: argparse.Namespace) -> int:
    from fedmodel.config import ConfigError, RunConfig
    from fedmodel.results import default_run_dir
    from server.deployment.local_federation import DeploymentError, deploy_local
    from simulations.simulate import check_delta

    started = time.perf_counter()
    values = dict(args.overrides)
    if args.run_dir:
        values["run-dir"] = str(Path(args.run_dir).resolve())
    try:
        if args.clients < 1:
            raise ConfigError(f"--clients = {args.clients} is out of range: must be >= 1")
        config = RunConfig.from_mapping(values)
        check_delta(config, num_clients=args.clients)
        if not config.run_dir:  # as `simulate`: under ./runs, not in the work folder
            values["run-dir"] = str(default_run_dir(config).resolve())
    except ConfigError as error:
        print(f"fedmodel: invalid config: {error}", file=sys.stderr)
        return 2

    work_dir = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="fedmodel-"))
    # `kill` of this command must stop the federation too, not orphan it.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        result = deploy_local(
            values,
            num_clients=args.clients,
            work_dir=work_dir,
            tls=args.tls,
            auth=args.auth,
            warm=not args.cold,
            timeout=args.timeout,
            on_line=_printer(verbose=args.verbose),
        )
    except KeyboardInterrupt:
        print(f"fedmodel: interrupted; every process stopped (logs: {work_dir / 'logs'})")
        return 130
    except DeploymentError as error:
        print(f"fedmodel: deployment failed: {error}\n(logs: {work_dir / 'logs'})", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    if result.status != "finished:completed" or not result.rounds:
        print(
            f"fedmodel: run {result.run_id} ended {result.status}; logs: {work_dir / 'logs'}",
            file=sys.stderr,
        )
        return 1
    if not args.work_dir:
        shutil.rmtree(work_dir, ignore_errors=True)
    final = result.final
    print(
        f"done in {time.perf_counter() - started:.1f} s: run {result.run_id}, "
        f"test accuracy {final.test_accuracy:.4f}"
        + (f", max client ε {final.epsilon_max:.3f}" if config.dp else ", DP off")
        + f"; run folder {result.run_dir}"
    )
    return 0


def _printer(*, verbose: bool) -> Callable[[str], None]:
    def show(line: str) -> None:
        if verbose or not (_FLOWER_INFO.match(line) or _FLOWER_COPY.match(line)):
            print(line, end="" if line.endswith("\n") else "\n", flush=True)

    return show


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
