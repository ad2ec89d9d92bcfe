"""Benchmark: the FedAvg paper's MNIST CNN result, paper vs ours (rounds to 99%).

McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data" (AISTATS, https://arxiv.org/abs/1602.05629), Table 2: the MNIST CNN
(``model = "cnn-fedavg"``: 5x5 convs of 32 and 64 channels, 2x2 max pooling, 512 dense,
1,663,370 parameters), 100 clients of 600 images, C = 0.1 (10 clients per round), no
DP, the client learning rate tuned per setting. Rounds to 99% test accuracy:

=================  ====  ===========
setting            IID   non-IID (2 shards of one label per client)
=================  ====  ===========
E = 5, B = 10      20    229
E = 1, B = 10      34    350
=================  ====  ===========

For each setting and each learning rate of the grid this runs ``fedmodel``'s simulation
(in-process engine) for ``--rounds`` rounds and reports the first round at or above the
target, the best accuracy and the wall time; ``-`` is "not reached within the rounds
run". The paper's grid was finer (it reports the best learning rate per setting).

Run (needs mnist.npz in ``--data-dir``/``$FEDMODEL_DATA_DIR``, default ../shared/data;
the full grid is hours of CPU on a 2-core machine: ~17 s per round of E = 5 when idle)::

    .venv/bin/python -m simulations.benchmarks.reproduce_fedavg \\
        [--settings iid-e5,iid-e1,shards-e5] [--learning-rates 0.1,0.2,0.3] [--rounds 40]
    .venv/bin/python -m simulations.benchmarks.reproduce_fedavg --smoke

``--smoke``: the same code path on the digits dataset (8x8 images shipped with
scikit-learn): the preset CNN, 20 clients, 4 per round, E = 1, 2 rounds; seconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulations.benchmarks.machine import (
    SMOKE_HELP,
    data_dir_help,
    default_data_dir,
    has_mnist,
    header,
    table,
)

TARGET = 0.99
# Table 2 of McMahan et al. 2017, CNN on MNIST: rounds to 99% (setting -> rounds).
PAPER_ROUNDS = {"iid-e5": 20, "iid-e1": 34, "shards-e5": 229, "shards-e1": 350}
SETTINGS = {
    "iid-e5": {"partitioner": "iid", "local-epochs": 5},
    "iid-e1": {"partitioner": "iid", "local-epochs": 1},
    "shards-e5": {"partitioner": "shards", "shards-per-client": 2, "local-epochs": 5},
    "shards-e1": {"partitioner": "shards", "shards-per-client": 2, "local-epochs": 1},
}


@dataclass(frozen=True)
class Outcome:
    """One run: the first round reaching ``target`` (None: not reached), best, wall time."""

    setting: str
    learning_rate: float
    rounds_run: int
    rounds_to_target: int | None
    best_accuracy: float
    final_accuracy: float
    seconds: float
    epsilon_max: float  # the largest client ε at the end (inf without DP)


def run_once(config: dict[str, Any], *, num_clients: int, target: float, setting: str) -> Outcome:
    """Simulate ``config`` in-process; read the rounds to ``target`` off its rounds."""
    from simulations import simulate

    with tempfile.TemporaryDirectory(prefix="reproduce-") as folder:
        start = time.perf_counter()
        result = simulate({**config, "run-dir": str(Path(folder) / "run")}, num_clients=num_clients)
        seconds = time.perf_counter() - start
    accuracies = [r.test_accuracy for r in result.rounds]
    reached = next((r.round for r in result.rounds if r.test_accuracy >= target), None)
    return Outcome(
        setting=setting,
        learning_rate=float(config["learning-rate"]),
        rounds_run=len(accuracies),
        rounds_to_target=reached,
        best_accuracy=max(accuracies),
        final_accuracy=accuracies[-1],
        seconds=seconds,
        epsilon_max=result.rounds[-1].epsilon_max,
    )


def fedavg_config(setting: str, *, learning_rate: float, rounds: int, data: dict[str, Any]) -> dict:
    """The paper's run config for ``setting`` (C = 0.1, B = 10, no DP)."""
    return {
        **data,
        "model": "cnn-fedavg",
        "fraction-train": 0.1,
        "batch-size": 10,
        "learning-rate": learning_rate,
        "num-server-rounds": rounds,
        "dp": False,
        **SETTINGS[setting],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--data-dir", default=default_data_dir(), help=data_dir_help())
    parser.add_argument(
        "--settings", default="iid-e5,iid-e1,shards-e5", help=f"of {', '.join(SETTINGS)}"
    )
    parser.add_argument("--learning-rates", default="0.1,0.2,0.3", help="client lr grid")
    parser.add_argument("--rounds", type=int, default=40, help="rounds per run (at most)")
    parser.add_argument("--target", type=float, default=TARGET)
    args = parser.parse_args(argv)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {', '.join(unknown)}: choose from {', '.join(SETTINGS)}")
    rates = [float(r) for r in args.learning_rates.split(",")]
    num_clients = 100
    if args.smoke:
        # The same path, on digits: the preset CNN on 8x8 images, tiny and quick.
        data: dict[str, Any] = {"dataset": "digits"}
        settings, rates, rounds, num_clients = ["iid-e1"], [0.05], 2, 20
        target = 0.5
    elif not has_mnist(args.data_dir):
        print(f"error: no mnist.npz in {args.data_dir}", file=sys.stderr)
        return 2
    else:
        data = {"dataset": "mnist", "data-dir": args.data_dir}
        rounds, target = args.rounds, args.target
    print(header("FedAvg Table 2 reproduction: MNIST CNN, 100 clients, C = 0.1, B = 10, no DP"))
    print()
    outcomes = []
    for setting in settings:
        for rate in rates:
            config = fedavg_config(setting, learning_rate=rate, rounds=rounds, data=data)
            if args.smoke:
                config["fraction-train"] = 0.2
            outcome = run_once(config, num_clients=num_clients, target=target, setting=setting)
            outcomes.append(outcome)
            print(
                f"{setting} lr {rate}: best {outcome.best_accuracy:.4f} in {outcome.rounds_run} "
                f"rounds, {target:.0%} at round {outcome.rounds_to_target or '-'}, "
                f"{outcome.seconds:.0f} s",
                flush=True,
            )
    print()
    rows = [
        (
            o.setting,
            PAPER_ROUNDS[o.setting],
            o.learning_rate,
            o.rounds_to_target or f"- (> {o.rounds_run})",
            f"{o.best_accuracy:.4f}",
            f"{o.seconds:.0f}",
            f"{o.seconds / o.rounds_run:.1f}",
        )
        for o in outcomes
    ]
    columns = (
        "setting",
        f"paper rounds to {target:.0%}",
        "client lr",
        f"ours rounds to {target:.0%}",
        "ours best acc",
        "wall s",
        "s / round",
    )
    print(table(columns, rows))
    if args.smoke and not all(o.rounds_run == rounds for o in outcomes):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
