"""The ``fedmodel`` command: one module of this package per subcommand.

- ``simulate``: :mod:`simulations.cli.simulate` (one job, or an experiment file with
  ``--config``);
- ``download``: :mod:`simulations.cli.download`;
- ``deploy-local``: :mod:`simulations.cli.deploy_local`;
- ``make-certs``, ``make-node-key``: :mod:`simulations.cli.make_certs`,
  :mod:`simulations.cli.make_node_key`;
- ``compress`` (prune and quantise a run's model), ``plot`` (redraw a run's plots),
  ``explain`` (attributions on the server's test set): :mod:`simulations.cli.compress`,
  :mod:`simulations.cli.plot`, :mod:`simulations.cli.explain`;
- ``audit`` (a membership-inference attack on a run's model, the empirical ε beside the
  claimed one): :mod:`simulations.cli.audit`.

:func:`main` is the one place that turns an expected failure into one line on stderr
(``fedmodel: invalid config: ...``) and an exit code; ``fedmodel --debug ...`` adds the
traceback. Any other exception is a bug and shows its traceback (exit code 1).

Exit codes:

- 0: done (every run of an experiment ok)
- 1: a run or a step failed: a run of an experiment, a deployment, a download
- 2: invalid input: arguments, run config, experiment file, data, a missing or existing file
- 130: interrupted (Ctrl-C; SIGTERM during deploy-local)
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from simulations.cli import (
    audit,
    compress,
    deploy_local,
    download,
    explain,
    make_certs,
    make_node_key,
    plot,
    simulate,
)
from simulations.cli.common import CommandFailed

EXIT_CODES = """\
exit codes:
  0    done (every run of an experiment ok)
  1    a run or a step failed: a run of an experiment, a deployment, a download
  2    invalid input: arguments, run config, experiment file, data, a missing or existing file
  130  interrupted (Ctrl-C; SIGTERM during deploy-local)
"""


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``fedmodel`` and its subcommands (each sets ``args.run``)."""
    parser = argparse.ArgumentParser(
        prog="fedmodel",
        description="Federated learning with differential privacy: simulate a job on this\n"
        "machine, or deploy it on Flower's runtime.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error as well"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for command in (
        simulate,
        download,
        deploy_local,
        make_certs,
        make_node_key,
        explain,
        compress,
        plot,
        audit,
    ):
        command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``fedmodel`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    try:
        return args.run(args)
    except BaseException as error:
        failure = _expected_failure(error)
        if failure is None:  # a bug: its traceback is the report
            raise
        code, message = failure
        if args.debug:
            traceback.print_exception(error)
        notes = getattr(error, "__notes__", [])  # context a command added on the way out
        print(f"fedmodel: {'; '.join([message, *notes])}", file=sys.stderr)
        return code


def _expected_failure(error: BaseException) -> tuple[int, str] | None:
    """The exit code and message of an expected failure; ``None`` for anything else."""
    if isinstance(error, KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(error, CommandFailed):
        return error.code, str(error)
    if not isinstance(error, Exception):  # SystemExit and the like pass through
        return None
    # Imported only now: the command may not have imported them (start-up stays fast).
    from fedmodel.config import ConfigError
    from fedmodel.data.sources import DataError
    from fedmodel.privacy.node_policy import PolicyRefusal
    from simulations.experiments.spec import ExperimentError

    if isinstance(error, ExperimentError):
        return 2, f"invalid experiment: {error}"
    if isinstance(error, ConfigError):
        return 2, f"invalid config: {error}"
    if isinstance(error, DataError):
        return 2, f"bad data: {error}"
    if isinstance(error, PolicyRefusal):
        return 2, f"refused by node policy: {error}"
    if isinstance(error, FileNotFoundError | FileExistsError):
        if error.filename is not None and error.strerror:  # the OS's own: name the file
            return 2, f"{error.filename}: {error.strerror}"
        return 2, str(error)
    if isinstance(error, ValueError):  # a value from the command line or a file
        return 2, str(error)
    return None
