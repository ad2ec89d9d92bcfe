"""Running an experiment: every planned run in its own folder, the summary after each.

The experiment folder (``<output-dir>/<name>-<time>/``) holds ``experiment.toml``,
``plan.json``, the summary (:mod:`simulations.experiments.summary`), the plots and one
folder per run.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO

from fedmodel.atomic_files import write_atomically
from fedmodel.results import load_metrics
from simulations.experiments.spec import Experiment, ExperimentError, _fmt
from simulations.experiments.summary import RunOutcome, write_summary
from simulations.plots import Settings, plot_experiment, plot_run
from simulations.progress import RoundProgress
from simulations.simulate import simulate


@dataclass(frozen=True)
class ExperimentResult:
    """The experiment folder and one outcome per planned run."""

    directory: Path
    outcomes: list[RunOutcome]

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status != "ok"]


def run_experiment(
    experiment: Experiment,
    *,
    directory: str | os.PathLike[str] | None = None,
    plots: bool = True,
    progress: bool = True,
    verbose: bool = False,
    engine: str = "inprocess",
    workers: int = 0,
    out: TextIO | None = None,
) -> ExperimentResult:
    """Run every planned run, each in its own folder; write the summary after each.

    A run that raises is recorded as failed (traceback in its ``error.txt``) and the
    next run starts. Ctrl-C stops the experiment after writing the summary.

    Parameters
    ----------
    experiment : Experiment
        From :func:`~simulations.experiments.spec.load_experiment`.
    directory : path-like, optional
        The experiment folder (default ``<output-dir>/<name>-<time>``); must not hold
        an experiment already.
    plots : bool
        Write PNG plots (each run's ``rounds.png``, the experiment's frontier and curves).
    progress : bool
        Show a progress bar over rounds when the output is a terminal.
    verbose : bool
        Also show Flower's log.
    engine, workers
        Passed to :func:`~simulations.simulate.simulate` for every run.
    out : text stream, optional
        Where progress lines go (default ``sys.stdout``).
    """
    out = out or sys.stdout
    folder = Path(directory) if directory else _new_directory(experiment)
    if (folder / "plan.json").exists():
        raise ExperimentError(f"experiment folder {str(folder)!r} already holds an experiment")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "experiment.toml").write_text(experiment.text, encoding="utf-8")
    _write_plan(folder, experiment)

    outcomes = [RunOutcome(run, "not run", folder / run.name) for run in experiment.runs]
    total = len(outcomes)
    print(experiment.describe(), file=out, flush=True)
    try:
        for outcome in outcomes:
            run = outcome.run
            label = ", ".join(f"{k}={_fmt(v)}" for k, v in run.grid.items() if v is not None)
            print(f"\n== run {run.index}/{total}: {label or run.name} ==", file=out, flush=True)
            config = run.config.replace(run_dir=str(outcome.run_dir))
            started = time.perf_counter()
            try:
                with RoundProgress(
                    run_dir=outcome.run_dir,
                    config=config,
                    label=f"run {run.index}/{total}",
                    enabled=progress,
                ):
                    simulate(
                        config,
                        num_clients=run.num_clients,
                        verbose=verbose,
                        engine=engine,
                        workers=workers,
                    )
                outcome.status = "ok"
            except KeyboardInterrupt:
                outcome.status = "interrupted"
                raise
            except Exception as error:  # noqa: BLE001 - one failing run must not lose the others
                outcome.status = "failed"
                outcome.error = f"{type(error).__name__}: {error}"
                try:
                    outcome.run_dir.mkdir(parents=True, exist_ok=True)
                    (outcome.run_dir / "error.txt").write_text(traceback.format_exc())
                except OSError:
                    pass  # the folder itself is the problem; the summary has the error
                print(f"run {run.index}/{total} FAILED: {outcome.error}", file=out, flush=True)
            finally:
                outcome.seconds = time.perf_counter() - started
                write_summary(folder, experiment, outcomes)
            if plots and outcome.status == "ok":
                _plot(lambda o=outcome: plot_run(o.run_dir), out)
    finally:
        write_summary(folder, experiment, outcomes)
        if plots:
            _plot(lambda: plot_experiment(folder, _settings(experiment, outcomes)), out)
    failed = [o for o in outcomes if o.status != "ok"]
    print(
        f"\nexperiment {experiment.name!r}: {total - len(failed)}/{total} runs ok; "
        f"summary: {folder / 'summary.md'}",
        file=out,
        flush=True,
    )
    return ExperimentResult(directory=folder, outcomes=outcomes)


def _settings(experiment: Experiment, outcomes: Sequence[RunOutcome]) -> Settings:
    """Finished runs grouped by setting: every grid value except the seed."""
    groups: Settings = {}
    for outcome in outcomes:
        if outcome.status != "ok":
            continue
        rounds = load_metrics(outcome.run_dir)
        if not rounds:
            continue
        label = ", ".join(
            f"{k}={_fmt(v)}" for k, v in outcome.run.grid.items() if k != "seed" and v is not None
        )
        groups.setdefault(label or experiment.name, []).append((outcome.run.config, rounds))
    return groups


def _plot(draw, out: TextIO) -> None:
    try:
        draw()
    except Exception as error:  # noqa: BLE001 - a plot must not cost the results
        print(f"warning: plotting failed: {type(error).__name__}: {error}", file=out, flush=True)


def _new_directory(experiment: Experiment) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(experiment.output_dir) / f"{experiment.name}-{stamp}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _write_plan(folder: Path, experiment: Experiment) -> None:
    plan = {
        "name": experiment.name,
        "source": str(experiment.source),
        "axes": experiment.axes,
        "skipped": experiment.duplicates,
        "runs": [
            {
                "name": run.name,
                "clients": run.num_clients,
                "grid": run.grid,
                "run_config": run.config.to_mapping(),
            }
            for run in experiment.runs
        ],
    }
    write_atomically(folder / "plan.json", json.dumps(plan, indent=2) + "\n")
