"""Benchmark: final test accuracy of FedAvg and the robust strategies under Byzantine clients.

Workload (no DP: plain SGD, so that accuracy differences are the aggregation's, not the
noise's): MNIST, a seeded subset of 10,000 training images split IID across 20 clients
(500 each) and 2,000 test images for central evaluation, given as custom data (two
``.npz`` files written to a temporary folder: pixels / 255, flattened); fedmodel's MLP
(one hidden layer of 64), 15 rounds, every client every round, 1 local epoch, batch 32,
SGD lr 0.1, seed 0. Without ``mnist.npz`` (``--data-dir``, ``$FEDMODEL_DATA_DIR``, default
../shared/data) it falls back to scikit-learn's digits (1,437 training images: 72 a
client), said in the header.

Runs: clean (no attacker) for every strategy, then ``round(0.2 * 20) = 4`` Byzantine
clients (:mod:`simulations.engines.byzantine`: the same 4 every round) with each attack:
``sign-flip``, ``scale`` (x1e3), ``gaussian`` (std 1), ``nan``, ``label-flip``; for FedAvg
(McMahan et al. 2017), FedMedian and FedTrimmedAvg (Yin et al. 2018; trim-beta 0.2),
Krum (Blanchard et al. 2017) and Bulyan (El Mhamdi et al. 2018), the last two told
``num-malicious-nodes = 4``. Update validation (:mod:`server.strategies.update_validation`)
is on for every run, with no norm bound (``max-update-norm = 0``): it only drops
malformed and non-finite replies. The goals checked at the end: FedAvg collapses under
``scale``; the best robust strategy stays within 2 points of clean FedAvg under every
attack but ``label-flip`` (a label-flipping client sends a plausible update, which no
rule here can tell from an honest one); ``nan`` never reaches a model (every NaN reply
rejected, every final model finite).

``--smoke``: digits, 5 clients (1 Byzantine), 2 rounds, FedAvg and FedMedian under
``nan`` and ``scale``: fails unless every NaN reply is rejected and every model is finite.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedmodel.config import BYZANTINE_ATTACKS
from simulations.benchmarks.machine import (
    SMOKE_HELP,
    data_dir_help,
    default_data_dir,
    has_mnist,
    header,
    mnist_subset,
    table,
)

STRATEGIES = ("fedavg", "fedmedian", "fedtrimmedavg", "krum", "bulyan")
ROBUST = ("fedmedian", "fedtrimmedavg", "krum", "bulyan")
ATTACKS = tuple(BYZANTINE_ATTACKS)  # sign-flip, scale, gaussian, nan, label-flip
TRAINING = {
    "dp": False,
    "model": "mlp",
    "hidden-sizes": "64",
    "local-epochs": 1,
    "batch-size": 32,
    "learning-rate": 0.1,
    "seed": 0,
}
COLLAPSED_BELOW = 0.2  # FedAvg "collapses": accuracy under 0.2 (10 classes: chance 0.1)
WITHIN = 0.02  # the best robust strategy: within 2 points of clean FedAvg


@dataclass(frozen=True)
class Outcome:
    """What one run ended with."""

    accuracy: float
    rejected: list[int]  # clients rejected by update validation, per round
    finite: bool  # the saved global model holds finite values only
    seconds: float


def subset_data(data_dir: str, folder: Path, *, train: int, test: int, seed: int) -> dict:
    """Seeded MNIST subsets (flattened pixels) as custom data; the run-config keys for them."""
    return mnist_subset(data_dir, folder, train=train, test=test, seed=seed, flatten=True)


def run(values: dict[str, Any], *, num_clients: int, run_dir: Path) -> Outcome:
    """One simulated run (its round lines kept out of the benchmark's output)."""
    from simulations import simulate

    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), _flower_errors_only():
        result = simulate({**values, "run-dir": str(run_dir)}, num_clients=num_clients)
    state = torch.load(run_dir / "model.pt")
    return Outcome(
        accuracy=result.final.test_accuracy,
        rejected=[r.clients_rejected for r in result.rounds],
        finite=all(bool(torch.isfinite(t).all()) for t in state.values()),
        seconds=time.perf_counter() - started,
    )


@contextlib.contextmanager
def _flower_errors_only() -> Iterator[None]:
    """Hide Flower's warnings (every rejected reply is one) while a run runs."""
    logger = logging.getLogger("flwr")

    def errors(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR

    logger.addFilter(errors)
    try:
        yield
    finally:
        logger.removeFilter(errors)


def strategy_values(strategy: str, *, byzantine: int) -> dict[str, Any]:
    """Run-config keys of ``strategy``: Krum and Bulyan are told how many attack."""
    values: dict[str, Any] = {"strategy": strategy}
    if strategy in ("krum", "bulyan"):
        values["num-malicious-nodes"] = byzantine
    return values


def benchmark(
    *,
    data: dict[str, Any],
    rounds: int,
    num_clients: int,
    fraction: float,
    strategies: Sequence[str],
    attacks: Sequence[str],
    folder: Path,
) -> dict[tuple[str, str], Outcome]:
    """Every (strategy, attack) run, ``"clean"`` among the attacks; printed as they end."""
    byzantine = round(fraction * num_clients)
    outcomes = {}
    for attack in ("clean", *attacks):
        for strategy in strategies:
            values = {
                **TRAINING,
                **data,
                "num-server-rounds": rounds,
                **strategy_values(strategy, byzantine=byzantine),
            }
            if attack != "clean":
                values.update({"byzantine-fraction": fraction, "byzantine-attack": attack})
            outcome = run(values, num_clients=num_clients, run_dir=folder / f"{strategy}-{attack}")
            outcomes[strategy, attack] = outcome
            print(
                f"  {attack:<10} {strategy:<13} acc {outcome.accuracy:.4f}  rejected/round "
                f"{max(outcome.rejected)}  finite {outcome.finite}  {outcome.seconds:.1f} s",
                flush=True,
            )
    return outcomes


def goals(
    outcomes: dict[tuple[str, str], Outcome],
    *,
    strategies: Sequence[str],
    attacks: Sequence[str],
    byzantine: int,
) -> list[tuple[str, bool, str]]:
    """The issue's three goals: (goal, met, evidence)."""
    checks = []
    clean = outcomes["fedavg", "clean"].accuracy
    if "scale" in attacks and "fedavg" in strategies:
        scaled = outcomes["fedavg", "scale"].accuracy
        checks.append(
            (f"FedAvg collapses under scale (acc < {COLLAPSED_BELOW})",
             scaled < COLLAPSED_BELOW, f"{scaled:.4f}")
        )
    judged = [a for a in attacks if a != "label-flip"]
    robust = [s for s in strategies if s in ROBUST]
    if robust and judged:
        worst = {s: max(clean - outcomes[s, a].accuracy for a in judged) for s in robust}
        best = min(worst, key=worst.get)
        checks.append(
            (
                f"best robust strategy within {100 * WITHIN:.0f} points of clean FedAvg "
                f"({clean:.4f}) under {', '.join(judged)}",
                worst[best] <= WITHIN,
                f"{best}: worst drop {100 * worst[best]:.2f} points",
            )
        )
    if "nan" in attacks:
        stopped = all(
            outcomes[s, "nan"].finite and set(outcomes[s, "nan"].rejected) == {byzantine}
            for s in strategies
        )
        checks.append(
            (
                "nan stopped by validation for every strategy",
                stopped,
                f"{byzantine} rejected every round, every model finite: {stopped}",
            )
        )
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--data-dir", default=default_data_dir(), help=data_dir_help())
    parser.add_argument("--rounds", type=int, default=None, help="default 15 (smoke: 2)")
    parser.add_argument("--clients", type=int, default=None, help="default 20 (smoke: 5)")
    parser.add_argument("--fraction", type=float, default=0.2, help="Byzantine fraction")
    parser.add_argument("--train-size", type=int, default=10_000, help="MNIST training subset")
    parser.add_argument("--test-size", type=int, default=2_000, help="MNIST test subset")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=None)
    parser.add_argument("--attacks", nargs="+", choices=ATTACKS, default=None)
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.smoke else 15)
    num_clients = args.clients or (5 if args.smoke else 20)
    strategies = args.strategies or (["fedavg", "fedmedian"] if args.smoke else list(STRATEGIES))
    attacks = args.attacks or (["nan", "scale"] if args.smoke else list(ATTACKS))
    byzantine = round(args.fraction * num_clients)
    torch.set_num_threads(1)  # as the clients train (simulations/engines/clientapp.py)
    mnist = has_mnist(args.data_dir) and not args.smoke
    print(header("Byzantine clients: final test accuracy by strategy and attack"), flush=True)
    with tempfile.TemporaryDirectory(prefix="fedmodel-byzantine-") as tmp:
        folder = Path(tmp)
        if mnist:
            data = subset_data(
                args.data_dir, folder, train=args.train_size, test=args.test_size, seed=0
            )
            what = (
                f"MNIST subset: {args.train_size} training images IID over {num_clients} "
                f"clients, {args.test_size} test images"
            )
        else:
            data = {"dataset": "digits"}
            why = "smoke" if args.smoke else f"no mnist.npz in {args.data_dir}"
            what = f"digits ({why}): 1437 training images IID over {num_clients} clients"
        print(
            f"workload: {what}; MLP 64, {rounds} rounds, E = 1, B = 32, lr 0.1, DP off; "
            f"{byzantine} of {num_clients} clients Byzantine under each attack",
            flush=True,
        )
        outcomes = benchmark(
            data=data,
            rounds=rounds,
            num_clients=num_clients,
            fraction=args.fraction,
            strategies=strategies,
            attacks=attacks,
            folder=folder,
        )
    columns = ["strategy", "clean", *attacks]
    rows = [
        [s, *(_accuracy(outcomes[s, a]) for a in ("clean", *attacks))] for s in strategies
    ]
    print(f"\nfinal test accuracy after {rounds} rounds ({byzantine} of {num_clients} Byzantine)")
    print(table(columns, rows))
    if args.smoke:
        # What must hold however tiny the run: validation stops every NaN update (the
        # accuracy goals need the full workload).
        nan_ok = all(
            outcomes[s, "nan"].finite and set(outcomes[s, "nan"].rejected) == {byzantine}
            for s in strategies
        )
        print(f"smoke: every NaN update rejected, every model finite: {nan_ok}")
        return 0 if nan_ok else 1
    for goal, met, evidence in goals(
        outcomes, strategies=strategies, attacks=attacks, byzantine=byzantine
    ):
        print(f"{'met' if met else 'NOT MET'}: {goal}: {evidence}")
    return 0


def _accuracy(outcome: Outcome) -> str:
    if not outcome.finite or math.isnan(outcome.accuracy):
        return "non-finite"
    return f"{outcome.accuracy:.4f}"


if __name__ == "__main__":
    sys.exit(main())
