"""Benchmark: federated DP-SGD on MNIST and Fashion-MNIST at ε <= 3, vs central references.

10 IID clients (6,000 training images each), every client every round, each running
DP-SGD on its own records: the ε reported is record-level per client, composed over all
of that client's DP-SGD steps of the run (RDP accountant, δ = 1e-5), the noise
calibrated once so that it ends at ``--epsilon``. Central DP-SGD references at ε = 3,
δ = 1e-5 (one model on all 60,000 records, which needs less noise for the same ε):
Tramèr & Boneh 2021 ("Differentially Private Learning Needs Better Features (or Much More
Data)", ICLR, https://arxiv.org/abs/2011.11660), end-to-end tanh CNN: MNIST 98.1%,
Fashion-MNIST 86.0%; Opacus's MNIST example: 96.8% at ε 2.5 (RDP).

The recipe (a tanh CNN, large batches, momentum; Papernot et al. 2021 on tempered
activations) is :data:`RECIPES`, the same as ``simulations/examples/mnist-dp-eps3.toml``
and ``fashion-mnist-dp-eps3.toml``. Goals: MNIST >= 97%, Fashion-MNIST >= 85%.

Run (needs mnist.npz / fashion_mnist.npz in ``--data-dir``/``$FEDMODEL_DATA_DIR``,
default ../shared/data; each round is 10 clients x 6,000 images of DP-SGD, minutes on a
2-core machine)::

    .venv/bin/python -m simulations.benchmarks.reproduce_dp [--datasets mnist,fashion-mnist]
        [--rounds 10] [--epsilon 3]
    .venv/bin/python -m simulations.benchmarks.reproduce_dp --smoke

``--smoke``: the same code path on the digits dataset (8x8 images shipped with
scikit-learn): 3 clients, 2 rounds at ε 3; seconds.
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
from simulations.benchmarks.reproduce_fedavg import run_once

DELTA = 1e-5
# The model and optimiser of the reproduction (run-config keys), per dataset.
RECIPE: dict[str, Any] = {
    "model": "cnn",
    "conv-channels": "16,32",
    "kernel-size": 5,
    "activation": "tanh",
    "normalization": "none",
    "hidden-sizes": "32",
    "batch-size": 512,
    "learning-rate": 0.5,
    "momentum": 0.9,
    "max-grad-norm": 1.0,
    "local-epochs": 1,
    "dp": True,
    "delta": DELTA,
    "accountant": "rdp",
}
RECIPES = {"mnist": RECIPE, "fashion-mnist": RECIPE}
FILES = {"mnist": "mnist.npz", "fashion-mnist": "fashion_mnist.npz"}
# Central DP-SGD at ε = 3, δ = 1e-5 (Tramèr & Boneh 2021, end-to-end CNN), and our goal.
REFERENCE = {"mnist": 0.981, "fashion-mnist": 0.860}
GOAL = {"mnist": 0.97, "fashion-mnist": 0.85}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--data-dir", default=default_data_dir(), help=data_dir_help())
    parser.add_argument("--datasets", default="mnist,fashion-mnist")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epsilon", type=float, default=3.0, help="per-client target ε")
    parser.add_argument("--clients", type=int, default=10)
    args = parser.parse_args(argv)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in datasets if d not in RECIPES]
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)}: choose from {', '.join(RECIPES)}")
    rounds, clients = args.rounds, args.clients
    if args.smoke:
        datasets, rounds, clients = ["digits"], 2, 3
    else:
        missing = [FILES[d] for d in datasets if not Path(args.data_dir, FILES[d]).is_file()]
        if missing:
            print(f"error: no {', '.join(missing)} in {args.data_dir}", file=sys.stderr)
            return 2
    print(
        header(
            f"Federated DP-SGD reproduction: {clients} clients, record-level ε <= "
            f"{args.epsilon} per client (δ = {DELTA}, RDP, all of a client's steps)"
        )
    )
    print()
    rows, ok = [], True
    for name in datasets:
        recipe = RECIPES.get(name, RECIPE)
        config = {
            **recipe,
            "dataset": name,
            "num-server-rounds": rounds,
            "target-epsilon": args.epsilon,
        }
        if name != "digits":
            config["data-dir"] = args.data_dir
        else:
            config["batch-size"] = 64  # 8x8 digits: 479 images per client
        goal = GOAL.get(name, 0.5)
        outcome = run_once(config, num_clients=clients, target=goal, setting=name)
        epsilon = outcome.epsilon_max
        ok = ok and outcome.rounds_run == rounds and epsilon <= args.epsilon + 1e-6
        rows.append(
            (
                name,
                f"{REFERENCE[name]:.3f}" if name in REFERENCE else "-",
                f"{goal:.2f}",
                f"{outcome.best_accuracy:.4f}",
                outcome.rounds_to_target or f"- (> {outcome.rounds_run})",
                f"{epsilon:.3f}",
                f"{outcome.seconds:.0f}",
            )
        )
    print()
    print(
        table(
            (
                "dataset",
                "central ref. acc (ε 3)",
                "goal",
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
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
