"""``fedmodel plot``: (re)draw the PNG plots of a run folder or an experiment folder.

Any run folder will do, whoever wrote it: ``fedmodel simulate --no-plots``, ``flwr run``
or ``fedmodel deploy-local`` (whose ServerApp writes no plots).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``plot`` to ``fedmodel``'s subcommands."""
    plot = commands.add_parser(
        "plot", help="(re)draw rounds.png of a run folder, or an experiment folder's plots"
    )
    plot.set_defaults(run=run)
    plot.add_argument("run_dir", metavar="RUN_DIR", help="a run folder or an experiment folder")


def run(args: argparse.Namespace) -> int:
    """Draw the plots of ``args.run_dir`` and print their paths (exit 0)."""
    folder = Path(args.run_dir)
    if (folder / "metrics.json").is_file():
        paths = [_plot_run(folder)]
    elif (folder / "plan.json").is_file():
        paths = _plot_experiment(folder)
    elif not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    else:
        raise FileNotFoundError(
            f"{folder}: not a run folder (no metrics.json) nor an experiment folder (no plan.json)"
        )
    print(f"plots: {', '.join(str(p) for p in paths)}")
    return 0


def _plot_run(folder: Path) -> Path:
    from simulations.plots import plot_run

    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: has metrics.json but no config.json")
    return plot_run(folder)


def _plot_experiment(folder: Path) -> list[Path]:
    """Every finished run's ``rounds.png``, then the experiment's own plots (plan.json)."""
    from fedmodel.config import RunConfig
    from fedmodel.results import load_metrics
    from simulations.experiments.spec import _fmt
    from simulations.plots import Settings, plot_experiment

    plan = json.loads((folder / "plan.json").read_text(encoding="utf-8"))
    paths: list[Path] = []
    settings: Settings = {}
    for planned in plan["runs"]:
        run_dir = folder / planned["name"]
        if not (run_dir / "metrics.json").is_file():
            continue  # not run, or failed before its first round
        rounds = load_metrics(run_dir)
        if not rounds:
            continue
        paths.append(_plot_run(run_dir))
        grid = planned.get("grid", {})
        label = ", ".join(
            f"{k}={_fmt(v)}" for k, v in grid.items() if k != "seed" and v is not None
        )
        config = RunConfig.from_mapping(planned["run_config"])
        settings.setdefault(label or plan["name"], []).append((config, rounds))
    if not settings:
        raise FileNotFoundError(f"{folder}: no run of the experiment has finished a round")
    return [*paths, *plot_experiment(folder, settings)]
