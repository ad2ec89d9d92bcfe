"""Benchmark: federated DP-SGD on MNIST and Fashion-MNIST at ε <= 3, vs central references.

10 IID clients (6,000 training images each), every client every round, each running
DP-SGD on its own records: the ε reported is record-level per client, composed over all
of that client's DP-SGD steps of the run (RDP accountant, δ = 1e-5), the noise
calibrated once so that it ends at ``--epsilon``. Central DP-SGD references at ε = 3,
δ = 1e-5 (one model on all 60,000 records): Tramèr & Boneh 2021 ("Differentially Private
Learning Needs Better Features (or Much More Data)", ICLR,
https://arxiv.org/abs/2011.11660), ScatterNet + linear: MNIST 98.7%, Fashion-MNIST 89.7%
(end-to-end tanh CNN: 98.1%, 86.0%).

The recipe is theirs, federated (:data:`RECIPE`, the same as
``simulations/examples/mnist-dp-eps3.toml`` and ``fashion-mnist-dp-eps3.toml``):
ScatterNet features (``features = "scattering"``: a fixed per-example transform, no
privacy cost), a linear model, batches of 1,024, clipping norm 0.1, lr 8 with momentum
0.9, one local epoch per round. Goals: MNIST >= 97%, Fashion-MNIST >= 85%.

``--frontier PNG`` also runs ε = 1, 2, 3, 8 and DP off (the same recipe without clipping
or noise, at :data:`NO_DP_LEARNING_RATE`) for each dataset and draws final accuracy
against ε into ``PNG``.

Run (needs mnist.npz / fashion_mnist.npz in ``--data-dir``/``$FEDMODEL_DATA_DIR``,
default ../shared/data, and kymatio, ``pip install 'fedmodel[features]'``; the
scattering of 70,000 images takes about a minute once per process, then a round takes
seconds on a 2-core machine)::

    .venv/bin/python -m simulations.benchmarks.reproduce_dp [--datasets mnist,fashion-mnist]
        [--rounds 20] [--epsilon 3] [--frontier dp_frontier.png]
    .venv/bin/python -m simulations.benchmarks.reproduce_dp --smoke

``--smoke``: the same code path on the digits dataset (8x8 images shipped with
scikit-learn): 3 clients, 2 rounds at ε 3 (and with ``--frontier``, ε 3 and DP off);
seconds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simulations.benchmarks.machine import (
    SMOKE_HELP,
    data_dir_help,
    default_data_dir,
    header,
    table,
)
from simulations.benchmarks.reproduce_fedavg import Outcome, run_once

DELTA = 1e-5
# The model and optimiser of the reproduction (run-config keys).
RECIPE: dict[str, Any] = {
    "features": "scattering",
    "model": "linear",
    "batch-size": 1024,
    "learning-rate": 8.0,
    "momentum": 0.9,
    "max-grad-norm": 0.1,
    "local-epochs": 1,
    "dp": True,
    "delta": DELTA,
    "accountant": "rdp",
}
# DP off: no clipping, so the step is that of the raw gradient (lr 8 diverges).
NO_DP_LEARNING_RATE = 0.05
FRONTIER_EPSILONS = (1.0, 2.0, 3.0, 8.0)
FILES = {"mnist": "mnist.npz", "fashion-mnist": "fashion_mnist.npz"}
# Central DP-SGD at ε = 3, δ = 1e-5 (Tramèr & Boneh 2021, ScatterNet + linear), our goal.
REFERENCE = {"mnist": 0.987, "fashion-mnist": 0.897}
GOAL = {"mnist": 0.97, "fashion-mnist": 0.85}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--data-dir", default=default_data_dir(), help=data_dir_help())
    parser.add_argument("--datasets", default="mnist,fashion-mnist")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--epsilon", type=float, default=3.0, help="per-client target ε")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument(
        "--frontier",
        metavar="PNG",
        help="also run ε 1, 2, 3, 8 and DP off per dataset; draw accuracy vs ε into PNG",
    )
    args = parser.parse_args(argv)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in datasets if d not in FILES]
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)}: choose from {', '.join(FILES)}")
    rounds, clients = args.rounds, args.clients
    epsilons = sorted({*FRONTIER_EPSILONS, args.epsilon}) if args.frontier else [args.epsilon]
    if args.smoke:
        datasets, rounds, clients = ["digits"], 2, 3
        epsilons = [args.epsilon]
    else:
        missing = [FILES[d] for d in datasets if not Path(args.data_dir, FILES[d]).is_file()]
        if missing:
            print(f"error: no {', '.join(missing)} in {args.data_dir}", file=sys.stderr)
            return 2
    print(
        header(
            f"Federated DP-SGD reproduction: {clients} clients, record-level ε per client "
            f"(δ = {DELTA}, RDP, all of a client's steps), {rounds} rounds"
        )
    )
    print()
    rows, ok = [], True
    points: dict[str, list[tuple[float | None, float]]] = {}
    for name in datasets:
        goal = GOAL.get(name, 0.5)
        for epsilon in [*epsilons, *([None] if args.frontier else [])]:
            outcome = run_once(
                _config(name, epsilon=epsilon, rounds=rounds, data_dir=args.data_dir),
                num_clients=clients,
                target=goal,
                setting=name,
            )
            measured = None if epsilon is None else outcome.epsilon_max
            points.setdefault(name, []).append((measured, outcome.final_accuracy))
            ok = ok and outcome.rounds_run == rounds
            if epsilon is not None:
                ok = ok and outcome.epsilon_max <= epsilon + 1e-6
            rows.append(_row(name, epsilon, goal, outcome))
    print()
    print(
        table(
            (
                "dataset",
                "target ε",
                "central ref. acc (ε 3)",
                "goal",
                "ours final acc",
                "ours best acc",
                "rounds to goal",
                "ours max client ε",
                "wall s",
            ),
            rows,
        )
    )
    print(
        f"ε: record-level per client, δ = {DELTA}, RDP accountant, composed over all "
        f"{rounds} rounds of the client's DP-SGD steps; recipe: "
        + ", ".join(f"{k} = {v}" for k, v in RECIPE.items() if k not in ("dp", "delta"))
        + f"; DP off: no clipping or noise, learning-rate = {NO_DP_LEARNING_RATE}"
    )
    if args.frontier:
        frontier = _plot_frontier(Path(args.frontier), points, rounds=rounds, clients=clients)
        print(f"wrote {frontier}")
    return 0 if ok else 1


def _config(name: str, *, epsilon: float | None, rounds: int, data_dir: str) -> dict[str, Any]:
    """The run config of ``name`` at target ``epsilon`` (None: DP off)."""
    config: dict[str, Any] = {**RECIPE, "dataset": name, "num-server-rounds": rounds}
    if epsilon is None:
        config.update({"dp": False, "learning-rate": NO_DP_LEARNING_RATE})
    else:
        config["target-epsilon"] = epsilon
    if name == "digits":
        config["batch-size"] = 64  # 8x8 digits: 479 images per client
    else:
        config["data-dir"] = data_dir
    return config


def _row(name: str, epsilon: float | None, goal: float, outcome: Outcome) -> tuple:
    return (
        name,
        "DP off" if epsilon is None else f"{epsilon:g}",
        f"{REFERENCE[name]:.3f}" if name in REFERENCE else "-",
        f"{goal:.2f}",
        f"{outcome.final_accuracy:.4f}",
        f"{outcome.best_accuracy:.4f}",
        outcome.rounds_to_target or f"- (> {outcome.rounds_run})",
        "inf" if epsilon is None else f"{outcome.epsilon_max:.3f}",
        f"{outcome.seconds:.0f}",
    )


def _plot_frontier(
    path: Path, points: dict[str, list[tuple[float | None, float]]], *, rounds: int, clients: int
) -> Path:
    from simulations.plots import new_figure, save_figure

    figure = new_figure(width=7.5, height=5.5)
    axes = figure.subplots()
    for (name, values), color in zip(points.items(), ("C0", "C1", "C2"), strict=False):
        dp = sorted((e, a) for e, a in values if e is not None)
        axes.plot(*zip(*dp, strict=True), "o-", color=color, label=f"{name}, DP-SGD")
        for epsilon, accuracy in values:
            if epsilon is None:
                axes.axhline(accuracy, color=color, ls="--", label=f"{name}, DP off")
        if name in REFERENCE:
            axes.plot(
                3.0,
                REFERENCE[name],
                "*",
                color=color,
                ms=11,
                label=f"{name}, central DP-SGD ε 3 (Tramèr & Boneh 2021)",
            )
    axes.set(
        title=f"Federated DP-SGD, {clients} clients, ScatterNet + linear, {rounds} rounds",
        xlabel="max client ε (record-level per client, δ = 1e-5, RDP)",
        ylabel="final test accuracy",
    )
    axes.grid(alpha=0.3)
    figure.legend(fontsize="small", loc="outside lower center", ncols=2)
    return save_figure(figure, path)


if __name__ == "__main__":
    raise SystemExit(main())
