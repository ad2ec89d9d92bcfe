"""PNG plots of a run folder and of an experiment folder (matplotlib, Agg, no pyplot).

Figures are built with matplotlib's object API and saved through the Agg canvas, so
plotting never touches pyplot's global backend (safe inside notebooks), and matplotlib
is imported only when a plot is drawn: ``fedmodel simulate`` starts without it.

- :func:`plot_run` writes ``<run-dir>/rounds.png``: test accuracy, test and train
  loss, and the max and mean client ε per round.
- :func:`plot_experiment` writes ``frontier.png`` (final accuracy against max ε, one
  point per setting, the Pareto frontier drawn through the best trade-offs) and
  ``accuracy.png`` (accuracy per round of every setting, the mean over seeds with the
  range across seeds shaded).
"""

from __future__ import annotations

import io
import json
import math
import os
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedmodel.atomic_files import write_atomically
from fedmodel.config import RunConfig
from fedmodel.privacy.ledger import ACCOUNTANT_NAMES
from fedmodel.results import RoundMetrics, load_metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 110
# Finished runs grouped by setting (a label), each run as its config and its rounds.
Settings = dict[str, list[tuple[RunConfig, list[RoundMetrics]]]]


def accuracy_of(metrics: RoundMetrics) -> float:
    """A round's accuracy: central test accuracy, else the clients' own evaluation."""
    if math.isnan(metrics.test_accuracy):
        return getattr(metrics, "client_accuracy", math.nan)
    return metrics.test_accuracy


def plot_run(run_dir: str | os.PathLike[str]) -> Path:
    """Write ``rounds.png`` into ``run_dir`` from its ``metrics.json`` and ``config.json``."""
    folder = Path(run_dir)
    rounds = load_metrics(folder)
    if not rounds:
        raise ValueError(f"{folder}: metrics.json holds no rounds to plot")
    config = _run_config(folder)
    figure = new_figure(width=15, height=4.2)
    accuracy_axes, loss_axes, epsilon_axes = figure.subplots(1, 3)
    x = [r.round for r in rounds]

    accuracy_axes.plot(x, [accuracy_of(r) for r in rounds], marker="o", ms=3)
    accuracy_axes.set(title="Test accuracy", xlabel="round", ylabel="accuracy")

    loss_axes.plot(x, [r.test_loss for r in rounds], marker="o", ms=3, label="test loss")
    loss_axes.plot(x, [r.train_loss for r in rounds], marker="o", ms=3, label="train loss")
    loss_axes.set(title="Loss", xlabel="round", ylabel="cross-entropy")
    loss_axes.legend()

    if config.dp:
        epsilon_axes.plot(x, [r.epsilon_max for r in rounds], marker="o", ms=3, label="max ε")
        epsilon_axes.plot(x, [r.epsilon_mean for r in rounds], marker="o", ms=3, label="mean ε")
        epsilon_axes.set(
            title=f"Client ε (δ={config.delta:g}, {ACCOUNTANT_NAMES[config.accountant]})",
            xlabel="round",
            ylabel="cumulative record-level ε",
        )
        epsilon_axes.legend()
    else:
        epsilon_axes.set_axis_off()
        epsilon_axes.text(0.5, 0.5, "DP off: ε = ∞", ha="center", va="center", fontsize=14)
    for axes in (accuracy_axes, loss_axes, epsilon_axes):
        axes.grid(alpha=0.3)
        _integer_rounds(axes)
    figure.suptitle(_run_title(folder, config))
    return save_figure(figure, folder / "rounds.png")


def plot_experiment(directory: str | os.PathLike[str], settings: Settings) -> list[Path]:
    """Write ``frontier.png`` and ``accuracy.png`` for the finished runs of an experiment,
    grouped by setting (every grid value except the seed)."""
    if not settings:
        return []
    folder = Path(directory)
    return [
        _frontier(folder / "frontier.png", settings),
        _curves(folder / "accuracy.png", settings),
    ]


def _frontier(path: Path, settings: Settings) -> Path:
    figure = new_figure(width=8, height=5.5)
    axes = figure.subplots()
    points: list[tuple[float, float]] = []
    notes: set[str] = set()
    colors = _colors(len(settings))
    for color, (label, runs) in zip(colors, settings.items(), strict=True):
        accuracy = [accuracy_of(rounds[-1]) for _, rounds in runs]
        config = runs[0][0]
        if not config.dp:
            mean = statistics.fmean(accuracy)
            axes.axhline(mean, color=color, ls="--", label=f"{label} (DP off)")
            continue
        notes.add(f"δ={config.delta:g}, {ACCOUNTANT_NAMES[config.accountant]}")
        epsilon = [rounds[-1].epsilon_max for _, rounds in runs]
        x, y = statistics.fmean(epsilon), statistics.fmean(accuracy)
        xerr = [[x - min(epsilon)], [max(epsilon) - x]] if len(runs) > 1 else None
        yerr = [[y - min(accuracy)], [max(accuracy) - y]] if len(runs) > 1 else None
        axes.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", color=color, capsize=3, label=label)
        points.append((x, y))
    front = _pareto(points)
    if len(front) > 1:
        axes.plot(*zip(*front, strict=True), color="black", lw=1, alpha=0.6, label="frontier")
    if points:
        epsilons = [p[0] for p in points]
        if min(epsilons) > 0 and max(epsilons) / min(epsilons) > 20:
            axes.set_xscale("log")
    axes.set(
        title="Final test accuracy vs privacy (mean over seeds, bars: range)",
        xlabel="max client ε" + (f" ({'; '.join(sorted(notes))})" if notes else ""),
        ylabel="final test accuracy",
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="best")
    return save_figure(figure, path)


def _curves(path: Path, settings: Settings) -> Path:
    figure = new_figure(width=9 if len(settings) <= 8 else 12, height=5.5)
    axes = figure.subplots()
    for color, (label, runs) in zip(_colors(len(settings)), settings.items(), strict=True):
        length = min(len(rounds) for _, rounds in runs)
        x = list(range(1, length + 1))
        by_round = [[accuracy_of(rounds[i]) for _, rounds in runs] for i in range(length)]
        axes.plot(x, [statistics.fmean(v) for v in by_round], color=color, label=label)
        if len(runs) > 1:
            axes.fill_between(
                x, [min(v) for v in by_round], [max(v) for v in by_round], color=color, alpha=0.2
            )
    axes.set(
        title="Test accuracy per round (mean over seeds, shade: range)",
        xlabel="round",
        ylabel="test accuracy",
    )
    axes.grid(alpha=0.3)
    _integer_rounds(axes)
    if len(settings) <= 8:
        axes.legend(fontsize="small", loc="lower right")
    else:
        axes.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(figure, path)


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both less ε and more accuracy, by increasing ε."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def _run_config(folder: Path) -> RunConfig:
    document: dict[str, Any] = json.loads((folder / "config.json").read_text())
    return RunConfig.from_mapping(document["run_config"])


def _run_title(folder: Path, config: RunConfig) -> str:
    privacy = f"DP-SGD σ={config.noise_multiplier:g}" if config.dp else "no DP"
    if config.dp and config.target_epsilon > 0:
        privacy = f"DP-SGD, target ε={config.target_epsilon:g}"
    return f"{folder.name}: {config.dataset}, {config.model}, {config.partitioner}, {privacy}"


def new_figure(*, width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(figure: Figure, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=DPI)
    write_atomically(path, png.getvalue())
    return path


def _colors(count: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]


def _integer_rounds(axes) -> None:
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_compression(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> Path:
    """Write ``path``: test accuracy against weight sparsity, one line per kind of model
    (``rows`` as ``fedmodel compress`` tabulates them: ``kind``, ``sparsity``, ``accuracy``)."""
    figure = new_figure(width=7, height=4.5)
    axes = figure.subplots()
    kinds = list(dict.fromkeys(row["kind"] for row in rows))
    for color, kind in zip(_colors(len(kinds)), kinds, strict=True):
        points = sorted((r["sparsity"], r["accuracy"]) for r in rows if r["kind"] == kind)
        axes.plot(*zip(*points, strict=True), marker="o", color=color, label=kind)
    axes.set(
        title="Test accuracy vs sparsity (global magnitude pruning)",
        xlabel="fraction of Linear/Conv weights pruned",
        ylabel="test accuracy",
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="lower left")
    return save_figure(figure, Path(path))
