"""What the subcommands share: ``--set`` / ``--run-dir``, the closing line, a failure type."""

from __future__ import annotations

import argparse
import math
import time
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedmodel.results import RoundMetrics


class CommandFailed(Exception):
    """A command could not do its job; ``main`` prints the message and exits with ``code``."""

    def __init__(self, message: str, *, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


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


def print_done(
    started: float,
    final: RoundMetrics,
    *,
    dp: bool,
    run_id: int | None = None,
    run_dir: Path | None = None,
) -> None:
    """The closing line of a job, e.g. ``done in 6.1 s: test accuracy 0.9167, max client ε
    8.000``; without a central test set the clients' own accuracy stands in."""
    parts = [] if run_id is None else [f"run {run_id}"]
    if not math.isnan(final.test_accuracy):
        parts.append(f"test accuracy {final.test_accuracy:.4f}")
    elif not math.isnan(final.client_accuracy):  # custom data without test-data
        parts.append(f"client accuracy {final.client_accuracy:.4f} (no central test set)")
    else:
        parts.append("no evaluation (no central test set, and no client evaluated)")
    if dp:
        parts.append(f"max client ε {final.epsilon_max:.3f}")
    if not math.isnan(final.user_epsilon):  # privacy-unit user or both (DP-FedAvg)
        parts.append(f"user-level ε {final.user_epsilon:.3f}")
    elif not dp:
        parts.append("DP off")
    line = f"done in {time.perf_counter() - started:.1f} s: " + ", ".join(parts)
    print(line if run_dir is None else f"{line}; run folder {run_dir}")
