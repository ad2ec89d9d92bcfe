"""An experiment file read, validated and expanded into its planned runs (every
combination of the grid, repeats dropped); the format is in :mod:`simulations.experiments`.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmodel.config import ConfigError, RunConfig
from simulations.client_data import check_delta

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
