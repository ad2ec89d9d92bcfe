"""Benchmark: accuracy and bytes per round with compressed updates (issue 15).

Workload (no DP, so that accuracy differences are the compression's, not the noise's):
MNIST, a seeded subset of 8,000 training images split IID across 10 clients and 2,000
test images for central evaluation, given as custom data (two ``.npz`` files of
``(N, 1, 28, 28)`` pixels / 255 in a temporary folder); fedmodel's CNN (hidden 128), 6
rounds, every client every round, 1 local epoch, batch 32, SGD lr 0.05, seed 0. Runs:
``update-compression`` none, int8, topk 10 %, topk 1 %. Bytes are what
:class:`~server.strategies.client_tracking.ClientTracking` measures: the serialised
size of the training replies (Flower's protobuf records), per round, mean over rounds.
Without ``mnist.npz`` (``--data-dir``, ``$FEDMODEL_DATA_DIR``, default ../shared/data) it
falls back to scikit-learn's digits with the MLP, said in the header.

Goal checked at the end: int8 within 0.5 points of uncompressed accuracy at 4x (or more)
fewer bytes.

``--smoke``: digits, 3 clients, 2 rounds, MLP, every method: fails unless every reply is
accepted, every compressed run sends fewer bytes than the uncompressed one, and int8
ends within 5 points of it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from simulations.benchmarks.machine import (
    SMOKE_HELP,
    data_dir_help,
    default_data_dir,
    has_mnist,
    header,
    mnist_subset,
    table,
)

METHODS: dict[str, dict[str, Any]] = {
    "none": {"update-compression": "none"},
    "int8": {"update-compression": "int8"},
    "topk 10%": {"update-compression": "topk", "topk-fraction": 0.1},
    "topk 1%": {"update-compression": "topk", "topk-fraction": 0.01},
}
TRAINING = {"dp": False, "local-epochs": 1, "batch-size": 32, "learning-rate": 0.05, "seed": 0}
WITHIN = 0.005  # int8: within 0.5 points of uncompressed
FEWER = 4.0  # int8: at least 4x fewer bytes


@dataclass(frozen=True)
class Outcome:
    """What one run ended with."""

    accuracy: float
    bytes_per_round: float
    ratio: float
    rejected: int
    seconds: float


def image_data(data_dir: str, folder: Path, *, train: int, test: int, seed: int) -> dict:
    """Seeded MNIST subsets (1x28x28 images) as custom data; the run-config keys for them."""
    return mnist_subset(data_dir, folder, train=train, test=test, seed=seed, flatten=False)


def run(values: dict[str, Any], *, num_clients: int, run_dir: Path) -> Outcome:
    """One simulated run (its round lines kept out of the benchmark's output)."""
    from simulations import simulate

    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        result = simulate({**values, "run-dir": str(run_dir)}, num_clients=num_clients)
    rounds = result.rounds
    sent = sum(r.bytes_sent for r in rounds)
    return Outcome(
        accuracy=result.final.test_accuracy,
        bytes_per_round=sent / len(rounds),
        ratio=sent / max(1, sum(r.bytes_uncompressed for r in rounds)),
        rejected=sum(r.clients_rejected for r in rounds),
        seconds=time.perf_counter() - started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--data-dir", default=default_data_dir(), help=data_dir_help())
    parser.add_argument("--rounds", type=int, default=None, help="default 6 (smoke: 2)")
    parser.add_argument("--clients", type=int, default=None, help="default 10 (smoke: 3)")
    parser.add_argument("--train-size", type=int, default=8_000, help="MNIST training subset")
    parser.add_argument("--test-size", type=int, default=2_000, help="MNIST test subset")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.smoke else 6)
    num_clients = args.clients or (3 if args.smoke else 10)
    torch.set_num_threads(1)  # as the clients train (simulations/engines/clientapp.py)
    mnist = has_mnist(args.data_dir) and not args.smoke
    print(header("Compressed updates: accuracy and bytes per round"), flush=True)
    outcomes = {}
    with tempfile.TemporaryDirectory(prefix="fedmodel-compression-") as tmp:
        folder = Path(tmp)
        if mnist:
            data = image_data(
                args.data_dir, folder, train=args.train_size, test=args.test_size, seed=0
            )
            data.update(model="cnn", **{"hidden-sizes": "128"})
            what = (
                f"MNIST subset: {args.train_size} training images IID over {num_clients} "
                f"clients, {args.test_size} test images; CNN"
            )
        else:
            data = {"dataset": "digits", "model": "mlp", "hidden-sizes": "64"}
            why = "smoke" if args.smoke else f"no mnist.npz in {args.data_dir}"
            what = f"digits ({why}) IID over {num_clients} clients; MLP 64"
        print(
            f"workload: {what}; {rounds} rounds, E = 1, B = 32, lr 0.05, DP off", flush=True
        )
        for name, method in METHODS.items():
            values = {**TRAINING, **data, **method, "num-server-rounds": rounds}
            slug = name.replace(" ", "-").replace("%", "")
            outcome = run(values, num_clients=num_clients, run_dir=folder / slug)
            outcomes[name] = outcome
            print(
                f"  {name:<9} acc {outcome.accuracy:.4f}  bytes/round "
                f"{outcome.bytes_per_round:,.0f}  ratio {outcome.ratio:.3f}  "
                f"{outcome.seconds:.1f} s",
                flush=True,
            )
    plain = outcomes["none"]
    rows = [
        [
            name,
            f"{o.accuracy:.4f}",
            f"{100 * (o.accuracy - plain.accuracy):+.2f}",
            f"{o.bytes_per_round:,.0f}",
            f"{o.ratio:.3f}",
            f"{1 / o.ratio:.1f}x",
        ]
        for name, o in outcomes.items()
    ]
    print(f"\nafter {rounds} rounds, {num_clients} clients (bytes: all training replies)")
    print(table(["method", "test acc", "Δ points", "bytes/round", "ratio", "fewer"], rows))
    int8 = outcomes["int8"]
    if args.smoke:
        ok = (
            all(o.rejected == 0 for o in outcomes.values())
            and all(o.bytes_per_round < plain.bytes_per_round for n, o in outcomes.items()
                    if n != "none")
            and abs(int8.accuracy - plain.accuracy) <= 0.05
        )
        print(f"smoke: every reply accepted, fewer bytes, int8 within 5 points: {ok}")
        return 0 if ok else 1
    met = plain.accuracy - int8.accuracy <= WITHIN and 1 / int8.ratio >= FEWER
    print(
        f"{'met' if met else 'NOT MET'}: int8 within {100 * WITHIN:.1f} points of uncompressed "
        f"at {FEWER:g}x fewer bytes: {100 * (int8.accuracy - plain.accuracy):+.2f} points, "
        f"{1 / int8.ratio:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
