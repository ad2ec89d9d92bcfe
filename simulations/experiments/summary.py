"""The summary of an experiment: ``summary.csv`` and ``summary.md``, one row per run."""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmodel.atomic_files import write_atomically
from fedmodel.config import RunConfig
from fedmodel.privacy.ledger import ACCOUNTANT_NAMES
from fedmodel.results import load_metrics
from simulations.experiments.spec import Experiment, PlannedRun, _fmt
from simulations.plots import accuracy_of


@dataclass
class RunOutcome:
    """What one run of an experiment produced (a row of the summary)."""

    run: PlannedRun
    status: str  # "ok", "failed", "interrupted", "not run"
    run_dir: Path
    seconds: float = math.nan
    error: str = ""


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
    return [_row(o, target_accuracy=experiment.target_accuracy) for o in outcomes]


def write_summary(folder: Path, experiment: Experiment, outcomes: Sequence[RunOutcome]) -> None:
    """Write ``summary.csv`` and ``summary.md`` (atomically) for the outcomes so far."""
    rows = summary_rows(experiment, outcomes)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(folder / "summary.csv", buffer.getvalue())
    write_atomically(folder / "summary.md", summary_markdown(experiment, rows))


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


def _row(outcome: RunOutcome, *, target_accuracy: float | None) -> dict[str, Any]:
    """The summary row: grid values, status, accuracy, ε (with δ, accountant), time."""
    config = outcome.run.config
    rounds = _read_rounds(outcome.run_dir)
    accuracies = [accuracy_of(r) for r in rounds]
    best = max(range(len(rounds)), key=lambda i: _nan_low(accuracies[i]), default=None)
    row: dict[str, Any] = {"run": outcome.run.name, "status": outcome.status}
    row.update({k: ("" if v is None else v) for k, v in outcome.run.grid.items()})
    row.update(
        clients=outcome.run.num_clients,
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
        wall_seconds=outcome.seconds,
        run_dir=str(outcome.run_dir),
        error=outcome.error,
    )
    return row


def _nan_low(value: float) -> float:
    return -math.inf if math.isnan(value) else value


def _read_rounds(run_dir: Path):
    try:
        return load_metrics(run_dir)
    except (OSError, ValueError, TypeError):
        return []
