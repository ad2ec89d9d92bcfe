"""Experiments: one TOML file describes one run or a grid of runs; each gets its own folder.

An experiment file has two tables::

    [experiment]
    name = "digits-dp-vs-nodp"     # names the experiment folder
    clients = 10                   # number of clients (a list makes it a grid axis)
    clients-per-round = 5          # optional: a count instead of fraction-train (may be a list)
    target-accuracy = 0.9          # optional: the summary reports rounds to reach it
    output-dir = "runs/experiments"  # optional: where the experiment folder goes

    [run-config]                   # any run-config key of pyproject.toml
    num-server-rounds = 20
    dp = [true, false]             # a list is a grid axis
    seed = [0, 1, 2]

The grid is the cartesian product of every list. Combinations that can only give the
same run (e.g. two noise multipliers with DP off) are run once. Every combination is
validated before anything runs. Relative paths (``output-dir``, ``data-dir``) are
relative to the current directory, as on the command line.

The experiment folder::

    <experiment-dir>/
      experiment.toml      the file as given
      plan.json            every run: folder, clients, grid values, resolved run config
      summary.csv          one row per run: status, final/best accuracy, max ε, δ, wall time
      summary.md           the same as a Markdown table (+ means over seeds)
      frontier.png         accuracy vs ε of every setting; accuracy.png: accuracy per round
      001_dp=true_seed=0/  one run folder per run (see fedmodel.results.run_folder)
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import math
import os
import re
import statistics
import sys
import time
import tomllib
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from fedmodel.config import ConfigError, RunConfig
from fedmodel.privacy.ledger import ACCOUNTANT_NAMES
from fedmodel.results import RoundMetrics, load_metrics

EXPERIMENT_KEYS = {
    "name": "names the experiment folder",
    "description": "free text, copied into summary.md",
    "clients": "number of clients (int or list of ints)",
    "clients-per-round": "clients sampled per round (int or list; instead of fraction-train)",
    "target-accuracy": "accuracy whose first round the summary reports",
    "output-dir": "folder that receives the experiment folder (default runs/experiments)",
}
DEFAULT_CLIENTS = 10
DEFAULT_OUTPUT_DIR = "runs/experiments"
# Run-config keys that cannot change a run under some setting (see _irrelevant_keys).
DP_ONLY_KEYS = (
    "noise-multiplier",
    "target-epsilon",
    "max-grad-norm",
    "delta",
    "accountant",
    "grad-sample-mode",
)


class ExperimentError(ConfigError):
    """An experiment file is malformed or one of its runs has an invalid config."""


@dataclass(frozen=True)
class PlannedRun:
    """One run of an experiment: its folder name, client count and validated config.

    ``grid`` holds the run's value of every grid axis (``None`` where the axis cannot
    matter for this run, e.g. ``noise-multiplier`` with DP off).
    """

    index: int
    name: str
    num_clients: int
    config: RunConfig
    grid: dict[str, Any]


@dataclass(frozen=True)
class Experiment:
    """A validated experiment: every run it will execute, in order."""

    name: str
    source: Path
    text: str
    description: str
    axes: dict[str, list[Any]]
    runs: list[PlannedRun]
    duplicates: list[str] = field(default_factory=list)
    target_accuracy: float | None = None
    output_dir: str = DEFAULT_OUTPUT_DIR

    def describe(self) -> str:
        """The plan as printed before running (and by ``--dry-run``)."""
        axes = ", ".join(f"{k} in {_fmt_list(v)}" for k, v in self.axes.items()) or "no grid"
        lines = [f"experiment {self.name!r} from {self.source}: {len(self.runs)} run(s); {axes}"]
        for run in self.runs:
            lines.append(f"  {run.name}  ({run.num_clients} clients)")
        if self.duplicates:
            lines.append(f"  {len(self.duplicates)} combination(s) would repeat a run, skipped:")
            lines += [f"    {d}" for d in self.duplicates[:3]]
            if len(self.duplicates) > 3:
                lines.append("    ... (all in plan.json)")
        return "\n".join(lines)


@dataclass
class RunOutcome:
    """What one run of an experiment produced (a row of the summary)."""

    run: PlannedRun
    status: str  # "ok", "failed", "interrupted", "not run"
    run_dir: Path
    seconds: float = math.nan
    error: str = ""

    def row(self, *, target_accuracy: float | None) -> dict[str, Any]:
        """The summary row: grid values, status, accuracy, ε (with δ, accountant), time."""
        config = self.run.config
        rounds = _read_rounds(self.run_dir)
        accuracies = [accuracy_of(r) for r in rounds]
        best = max(range(len(rounds)), key=lambda i: _nan_low(accuracies[i]), default=None)
        row: dict[str, Any] = {"run": self.run.name, "status": self.status}
        row.update({k: ("" if v is None else v) for k, v in self.run.grid.items()})
        row.update(
            clients=self.run.num_clients,
            rounds=len(rounds),
            final_accuracy=accuracies[-1] if rounds else math.nan,
            best_accuracy=accuracies[best] if best is not None else math.nan,
            best_round=rounds[best].round if best is not None else "",
        )
        if target_accuracy is not None:
            reached = [
                r.round for r, a in zip(rounds, accuracies, strict=True) if a >= target_accuracy
            ]
            row["rounds_to_target"] = reached[0] if reached else ""
        row.update(
            final_loss=rounds[-1].test_loss if rounds else math.nan,
            epsilon_max=(rounds[-1].epsilon_max if rounds else math.nan) if config.dp else math.inf,
            delta=config.delta if config.dp else "",
            accountant=ACCOUNTANT_NAMES[config.accountant] if config.dp else "",
            wall_seconds=self.seconds,
            run_dir=str(self.run_dir),
            error=self.error,
        )
        return row


@dataclass(frozen=True)
class ExperimentResult:
    """The experiment folder and one outcome per planned run."""

    directory: Path
    outcomes: list[RunOutcome]

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status != "ok"]


# -- loading and validation --------------------------------------------------------------


def load_experiment(
    path: str | os.PathLike[str],
    *,
    overrides: Mapping[str, Any] | None = None,
    clients: int | None = None,
) -> Experiment:
    """Read and validate an experiment file; every combination of its grid is checked.

    Parameters
    ----------
    path : path-like
        The experiment TOML file.
    overrides : mapping, optional
        Run-config values that replace the file's (``fedmodel simulate --set``); a list
        value is a grid axis.
    clients : int, optional
        Replaces the file's ``clients`` (``fedmodel simulate --clients``).

    Raises
    ------
    ExperimentError
        Naming the file, the key and the value of every problem found; nothing is run
        or written.
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
        document = tomllib.loads(text)
    except OSError as error:
        raise ExperimentError(f"{source}: cannot read experiment file: {error}") from error
    except tomllib.TOMLDecodeError as error:
        raise ExperimentError(f"{source}: not valid TOML: {error}") from error

    unknown = set(document) - {"experiment", "run-config"}
    if unknown:
        raise ExperimentError(
            f"{source}: unknown table(s) {sorted(unknown)}; an experiment file has "
            "[experiment] and [run-config]"
        )
    header = _table(document, "experiment", source)
    values = {**_table(document, "run-config", source), **dict(overrides or {})}
    for key in header:
        if key not in EXPERIMENT_KEYS:
            known = ", ".join(EXPERIMENT_KEYS)
            raise ExperimentError(f"{source}: unknown key {key!r} in [experiment]; known: {known}")
    if "run-dir" in values:
        raise ExperimentError(
            f"{source}: [run-config] key 'run-dir' = {values['run-dir']!r} is not allowed: "
            "each run's folder is made inside the experiment folder"
        )
    if "clients-per-round" in header and "fraction-train" in values:
        raise ExperimentError(
            f"{source}: give either [experiment] 'clients-per-round' or [run-config] "
            "'fraction-train', not both"
        )

    name = header.get("name", source.stem)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ExperimentError(
            f"{source}: [experiment] key 'name' = {name!r} must be letters, digits, '.', '_', '-'"
        )
    description = header.get("description", "")
    output_dir = header.get("output-dir", DEFAULT_OUTPUT_DIR)
    for key, value in (("description", description), ("output-dir", output_dir)):
        if not isinstance(value, str):
            raise ExperimentError(
                f"{source}: [experiment] key {key!r} = {value!r} must be a string"
            )
    target = header.get("target-accuracy")
    if target is not None and not (
        isinstance(target, int | float) and not isinstance(target, bool) and 0 < target <= 1
    ):
        raise ExperimentError(
            f"{source}: [experiment] key 'target-accuracy' = {target!r} must be in (0, 1]"
        )

    # Grid axes in file order: clients first, then the run-config keys.
    axes: dict[str, list[Any]] = {}
    fixed: dict[str, Any] = {}
    client_values = header.get("clients", DEFAULT_CLIENTS) if clients is None else clients
    client_keys = [("clients", client_values)]
    if "clients-per-round" in header:
        client_keys.append(("clients-per-round", header["clients-per-round"]))
    for key, value in client_keys:
        for item in _as_list(value, key=key, table="experiment", source=source):
            if not isinstance(item, int) or isinstance(item, bool) or item < 1:
                raise ExperimentError(
                    f"{source}: [experiment] key {key!r} = {item!r} must be an integer >= 1"
                )
        _place(key, value, axes, fixed)
    for key, value in values.items():
        _as_list(value, key=key, table="run-config", source=source)
        _place(key, value, axes, fixed)

    problems = _check_values(source, fixed, axes)
    if problems:
        raise ExperimentError("\n".join(problems))
    runs, duplicates, problems = _expand(source, fixed, axes)
    if problems:
        raise ExperimentError("\n".join(problems))
    return Experiment(
        name=name,
        source=source,
        text=text,
        description=description,
        axes=axes,
        runs=runs,
        duplicates=duplicates,
        target_accuracy=float(target) if target is not None else None,
        output_dir=output_dir,
    )


def _table(document: Mapping[str, Any], name: str, source: Path) -> dict[str, Any]:
    table = document.get(name, {})
    if not isinstance(table, dict):
        raise ExperimentError(f"{source}: [{name}] must be a table")
    return dict(table)


def _as_list(value: Any, *, key: str, table: str, source: Path) -> list[Any]:
    if isinstance(value, dict):
        raise ExperimentError(
            f"{source}: [{table}] key {key!r} must be a value or a list, not a table"
        )
    if not isinstance(value, list):
        return [value]
    if not value:
        raise ExperimentError(f"{source}: [{table}] key {key!r} is an empty list")
    for item in value:
        if isinstance(item, list | dict):
            raise ExperimentError(
                f"{source}: [{table}] key {key!r} = {value!r}: list items must be plain values"
            )
    if len(set(map(repr, value))) != len(value):
        raise ExperimentError(f"{source}: [{table}] key {key!r} = {value!r} repeats a value")
    return value


def _place(key: str, value: Any, axes: dict[str, list[Any]], fixed: dict[str, Any]) -> None:
    if isinstance(value, list) and len(value) > 1:
        axes[key] = value
    else:
        fixed[key] = value[0] if isinstance(value, list) else value


def _check_values(source: Path, fixed: dict[str, Any], axes: dict[str, list[Any]]) -> list[str]:
    """Check every fixed value and every listed value on its own (clear, per-key errors)."""
    base = {k: v for k, v in fixed.items() if k not in EXPERIMENT_KEYS}
    problems = []
    try:
        RunConfig.from_mapping(base)
    except ConfigError as error:
        return [f"{source}: [run-config]: {error}"]
    for key, values in axes.items():
        if key in EXPERIMENT_KEYS:
            continue
        for value in values:
            try:
                RunConfig.from_mapping({**base, key: value})
            except ConfigError as error:
                problems.append(f"{source}: [run-config] list {key!r}: {error}")
    return problems


def _expand(
    source: Path, fixed: dict[str, Any], axes: dict[str, list[Any]]
) -> tuple[list[PlannedRun], list[str], list[str]]:
    """Every combination of the axes, validated; repeats of the same run dropped."""
    from simulations.simulate import check_delta

    runs: list[PlannedRun] = []
    duplicates: list[str] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    for combination in itertools.product(*axes.values()) if axes else [()]:
        chosen = dict(zip(axes, combination, strict=True))
        values = {**fixed, **chosen}
        num_clients = int(values.pop("clients", DEFAULT_CLIENTS))
        per_round = values.pop("clients-per-round", None)
        label = ", ".join(f"{k}={_fmt(v)}" for k, v in chosen.items()) or "the run"
        try:
            if per_round is not None:
                if per_round > num_clients:
                    raise ConfigError(
                        f"[experiment] key 'clients-per-round' = {per_round} is out of range: "
                        f"must be <= clients = {num_clients}"
                    )
                values["fraction-train"] = fraction_for(per_round, num_clients)
            config = RunConfig.from_mapping(values)
            check_delta(config, num_clients=num_clients)
        except (ConfigError, ValueError, OSError) as error:
            problems.append(f"{source}: in {label}: {error}")
            continue
        irrelevant = _irrelevant_keys(config)
        grid = {k: (None if k in irrelevant else v) for k, v in chosen.items()}
        identity = json.dumps(
            [num_clients, {k: v for k, v in config.to_mapping().items() if k not in irrelevant}],
            sort_keys=True,
        )
        if identity in seen:
            duplicates.append(f"{label}: same run as {seen[identity]}")
            continue
        name = _run_name(len(runs) + 1, grid)
        seen[identity] = name
        runs.append(
            PlannedRun(
                index=len(runs) + 1, name=name, num_clients=num_clients, config=config, grid=grid
            )
        )
    for key in axes:
        if runs and key not in EXPERIMENT_KEYS and all(r.grid[key] is None for r in runs):
            problems.append(
                f"{source}: [run-config] key {key!r} = {_fmt_list(axes[key])} cannot change "
                f"any run: {_why_unused(key, runs[0].config)}"
            )
    return runs, duplicates, problems


def _why_unused(key: str, config: RunConfig) -> str:
    if key in DP_ONLY_KEYS and not config.dp:
        return "dp is false"
    if key == "noise-multiplier":
        return (
            f"target-epsilon = {config.target_epsilon:g} sets the noise; "
            "add target-epsilon = 0 to use noise-multiplier"
        )
    return f"partitioner = {config.partitioner!r} does not read it"


def fraction_for(count: int, num_clients: int) -> float:
    """The ``fraction-train`` that makes FedAvg sample exactly ``count`` clients.

    FedAvg samples ``int(num_clients * fraction_train)`` nodes; ``count / num_clients``
    can round to one fewer in floating point, hence the nudge.
    """
    fraction = count / num_clients
    while int(num_clients * fraction) < count:
        fraction = math.nextafter(fraction, 2.0)
    return min(fraction, 1.0)


def _irrelevant_keys(config: RunConfig) -> set[str]:
    """Run-config keys whose value cannot change this run (the code never reads them)."""
    keys: set[str] = {"run-dir"}
    if not config.dp:
        keys.update(DP_ONLY_KEYS)
    elif config.target_epsilon > 0:
        keys.add("noise-multiplier")  # calibrated from target-epsilon instead
    if config.partitioner != "dirichlet":
        keys.add("dirichlet-alpha")
    if config.partitioner != "shards":
        keys.add("shards-per-client")
    return keys


def _run_name(index: int, grid: Mapping[str, Any]) -> str:
    parts = [f"{index:03d}"] + [f"{k}={_fmt(v)}" for k, v in grid.items() if v is not None]
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "-", "_".join(parts))[:120]


# -- running -----------------------------------------------------------------------------


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
        From :func:`load_experiment`.
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
    from simulations.progress import RoundProgress
    from simulations.simulate import simulate

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
                _plot(lambda o=outcome: _plots().plot_run(o.run_dir), out)
    finally:
        write_summary(folder, experiment, outcomes)
        if plots:
            _plot(lambda: _plots().plot_experiment(folder, experiment, outcomes), out)
    failed = [o for o in outcomes if o.status != "ok"]
    print(
        f"\nexperiment {experiment.name!r}: {total - len(failed)}/{total} runs ok; "
        f"summary: {folder / 'summary.md'}",
        file=out,
        flush=True,
    )
    return ExperimentResult(directory=folder, outcomes=outcomes)


def run_from_command_line(args: argparse.Namespace) -> int:
    """``fedmodel simulate --config FILE``: validate the whole grid, then run it.

    Exit status: 0 all runs ok, 1 some run failed, 2 invalid experiment, 130 Ctrl-C.
    """
    try:
        experiment = load_experiment(
            args.config, overrides=dict(args.overrides), clients=args.clients
        )
    except ConfigError as error:
        print(f"fedmodel: invalid experiment:\n{error}", file=sys.stderr)
        return 2
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
            engine=getattr(args, "engine", "inprocess"),
            workers=getattr(args, "workers", 0) or 0,
        )
    except ExperimentError as error:
        print(f"fedmodel: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedmodel: interrupted; the summary lists the runs that finished", file=sys.stderr)
        return 130
    return 1 if result.failed else 0


def _plots():
    from simulations import plots

    return plots


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
    _atomic_write(folder / "plan.json", json.dumps(plan, indent=2) + "\n")


# -- the summary -------------------------------------------------------------------------

SUMMARY_HEADINGS = {
    "final_accuracy": "final acc",
    "best_accuracy": "best acc",
    "best_round": "best round",
    "rounds_to_target": "rounds to target",
    "epsilon_max": "max ε",
    "delta": "δ",
    "accountant": "accountant",
    "wall_seconds": "wall s",
}


def summary_rows(experiment: Experiment, outcomes: Sequence[RunOutcome]) -> list[dict[str, Any]]:
    """One summary row per planned run."""
    return [o.row(target_accuracy=experiment.target_accuracy) for o in outcomes]


def write_summary(folder: Path, experiment: Experiment, outcomes: Sequence[RunOutcome]) -> None:
    """Write ``summary.csv`` and ``summary.md`` (atomically) for the outcomes so far."""
    rows = summary_rows(experiment, outcomes)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write(folder / "summary.csv", buffer.getvalue())
    _atomic_write(folder / "summary.md", summary_markdown(experiment, rows))


def summary_markdown(experiment: Experiment, rows: Sequence[Mapping[str, Any]]) -> str:
    """The summary as Markdown: a table of runs, and of means over seeds if seeds vary."""
    axes = [k for k in experiment.axes]
    fixed_text = ", ".join(f"{k}={_fmt(v)}" for k, v in _common_settings(experiment).items())
    lines = [f"# Experiment {experiment.name}", ""]
    if experiment.description:
        lines += [experiment.description, ""]
    lines += [
        f"From `{experiment.source}`. Fixed: {fixed_text or 'defaults'}.",
        "",
        "Accuracy: central test accuracy of the global model. max ε: the largest, over "
        "clients, of each client's record-level ε cumulative over all its DP-SGD steps, "
        "at the δ and with the accountant named (∞: DP off).",
        "",
    ]
    columns = ["run", *axes, "status", "final_accuracy", "best_accuracy", "best_round"]
    headings = dict(SUMMARY_HEADINGS)
    if experiment.target_accuracy is not None:
        columns.append("rounds_to_target")
        headings["rounds_to_target"] = f"rounds to {experiment.target_accuracy:g}"
    columns += ["epsilon_max", "delta", "accountant", "wall_seconds"]
    lines += _markdown_table(columns, rows, headings)
    if "seed" in axes and len(experiment.axes["seed"]) > 1:
        lines += ["", "## Mean ± standard deviation over seeds (runs that finished)", ""]
        lines += _seed_table([a for a in axes if a != "seed"], rows)
    failed = [r for r in rows if r["status"] not in ("ok", "not run")]
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += [f"- `{r['run']}`: {r['status']}: {r['error']}" for r in failed]
    if experiment.duplicates:
        lines += ["", "Skipped (would repeat a run): " + "; ".join(experiment.duplicates)]
    return "\n".join(lines) + "\n"


def _common_settings(experiment: Experiment) -> dict[str, Any]:
    """Fixed run-config values that differ from the defaults (what the grid holds constant)."""
    if not experiment.runs:
        return {}
    first = experiment.runs[0]
    defaults = RunConfig().to_mapping()
    common = {"clients": first.num_clients} if "clients" not in experiment.axes else {}
    for key, value in first.config.to_mapping().items():
        if key in experiment.axes or key == "run-dir" or value == defaults[key]:
            continue
        if all(run.config.to_mapping()[key] == value for run in experiment.runs):
            common[key] = value
    return common


def _markdown_table(
    columns: Sequence[str], rows: Sequence[Mapping[str, Any]], headings: Mapping[str, str]
) -> list[str]:
    head = [headings.get(c, c) for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(c, row.get(c, "")) for c in columns) + " |")
    return lines


def _seed_table(keys: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        if row["status"] == "ok":
            groups.setdefault(tuple(row.get(k, "") for k in keys), []).append(row)
    head = [*keys, "seeds", "final acc", "best acc", "max ε"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, group in groups.items():
        cells = [_fmt(v) for v in key] + [str(len(group))]
        for metric in ("final_accuracy", "best_accuracy", "epsilon_max"):
            cells.append(_mean_std([float(r[metric]) for r in group]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _mean_std(values: list[float]) -> str:
    if any(math.isinf(v) for v in values):
        return "∞"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def _cell(column: str, value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if math.isinf(value):
            return "∞ (DP off)" if column == "epsilon_max" else "∞"
        if column == "wall_seconds":
            return f"{value:.1f}"
        if column == "delta":
            return f"{value:g}"
        if column == "epsilon_max":
            return f"{value:.3f}"
        return f"{value:.4f}" if column in ("final_accuracy", "best_accuracy") else _fmt(value)
    return _fmt(value) if value != "" else ("–" if column not in ("run", "status") else "")


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _fmt_list(values: Sequence[Any]) -> str:
    return "[" + ", ".join(_fmt(v) for v in values) + "]"


def accuracy_of(metrics: RoundMetrics) -> float:
    """A round's accuracy: central test accuracy, else the clients' own evaluation."""
    if math.isnan(metrics.test_accuracy):
        return getattr(metrics, "client_accuracy", math.nan)
    return metrics.test_accuracy


def _nan_low(value: float) -> float:
    return -math.inf if math.isnan(value) else value


def _read_rounds(run_dir: Path):
    try:
        return load_metrics(run_dir)
    except (OSError, ValueError, TypeError):
        return []


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


__all__ = [
    "Experiment",
    "ExperimentError",
    "ExperimentResult",
    "PlannedRun",
    "RunOutcome",
    "fraction_for",
    "load_experiment",
    "run_experiment",
    "summary_markdown",
    "write_summary",
]
