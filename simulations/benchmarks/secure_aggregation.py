"""Benchmark: the per-round cost of secure aggregation (SecAgg+) against plain FedAvg.

Workload: scikit-learn's digits (no files needed) IID over 5 clients, every client every
round, DP-SGD as by default but with a fixed noise multiplier 1.0 (no calibration), 1
local epoch, batch 64, seed 0, the in-process engine. Two models: fedmodel's MLP with
hidden layer 64 (4.8k parameters) and with hidden layers 1024,960 (1.06M parameters).
For each, the same run with ``secure-aggregation`` false and true (3 shares, threshold
2), one after the other in this process (after a warm-up run, not measured). Per
round: the median of the rounds' own durations (``RoundMetrics.seconds``: training,
aggregation, central evaluation) over rounds 2.. (round 1 also starts up); the
process's CPU time for the whole run divided by the rounds (this process runs server
and clients: the work done, less sensitive than wall time to other jobs on the
machine); and the bytes of all replies the server received (under SecAgg+ those of all
four protocol stages). The two runs train the same clients on the same seeds, so the
difference is SecAgg+'s own cost: key agreement, secret sharing, masking, quantization,
unmasking. The final models are also compared (``max |Δw|``): after one round they
agree to within Flower's quantization (``quantization_tolerance`` of
``server/secure_aggregation.py``, about 4e-6 here); over more rounds the clients train
from slightly different models and the gap grows with training (up to 2e-4 for the
small and 6e-4 for the large model after 5 rounds at learning rate 1.0; not
reproducible bit for bit: Flower's stochastic rounding draws from NumPy's global
generator). Fails unless every run aggregates every client in every round.

``--smoke``: the small MLP, 1 round: fails unless both runs complete with every client
and the models agree to 1e-5 (the quantization bound is about 4e-6).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from simulations.benchmarks.machine import SMOKE_HELP, header, table

MODELS = {"MLP 64": "64", "MLP 1024,960": "1024,960"}
TRAINING = {
    "dataset": "digits",
    "model": "mlp",
    "noise-multiplier": 1.0,
    "target-epsilon": 0.0,
    "local-epochs": 1,
    "batch-size": 64,
    "seed": 0,
}
SECURE = {"secure-aggregation": True, "secagg-num-shares": 3, "secagg-reconstruction-threshold": 2}
SMOKE_AGREEMENT = 1e-5


@dataclass(frozen=True)
class Outcome:
    """What one run measured."""

    seconds_per_round: float
    cpu_per_round: float
    bytes_per_round: float
    trained: int
    accuracy: float
    model: dict[str, torch.Tensor]


def run(values: dict[str, Any], *, num_clients: int, run_dir: Path) -> Outcome:
    """One simulated run, its round lines kept out of the benchmark's output."""
    from simulations import simulate

    cpu = time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        result = simulate({**values, "run-dir": str(run_dir)}, num_clients=num_clients)
    cpu = time.process_time() - cpu
    rounds = result.rounds
    timed = rounds[1:] or rounds  # round 1 also loads data
    return Outcome(
        seconds_per_round=statistics.median(r.seconds for r in timed),
        cpu_per_round=cpu / len(rounds),
        bytes_per_round=sum(r.bytes_sent for r in rounds) / len(rounds),
        trained=min(r.clients_trained for r in rounds),
        accuracy=result.final.test_accuracy,
        model=torch.load(run_dir / "model.pt"),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--rounds", type=int, default=None, help="default 5 (smoke: 1)")
    parser.add_argument("--clients", type=int, default=5, help="default 5")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.smoke else 5)
    models = {"MLP 64": MODELS["MLP 64"]} if args.smoke else MODELS
    torch.set_num_threads(1)  # as the clients train (simulations/engines/clientapp.py)
    print(header("Secure aggregation (SecAgg+): per-round cost against plain FedAvg"))
    print(
        f"workload: digits IID over {args.clients} clients, all sampled; {rounds} rounds; "
        "DP-SGD z = 1.0, E = 1, B = 64; SecAgg+ 3 shares, threshold 2; in-process engine",
        flush=True,
    )
    rows, ok = [], True
    with tempfile.TemporaryDirectory(prefix="fedmodel-secagg-") as tmp:
        if not args.smoke:  # the first run in a process loads the data and fills caches
            warm = {**TRAINING, **SECURE, "num-server-rounds": 1}
            run(warm, num_clients=args.clients, run_dir=Path(tmp) / "warm-up")
        for name, hidden in models.items():
            values = {**TRAINING, "hidden-sizes": hidden, "num-server-rounds": rounds}
            started = time.perf_counter()
            plain = run(values, num_clients=args.clients, run_dir=Path(tmp) / f"{hidden}-plain")
            secure = run(
                {**values, **SECURE}, num_clients=args.clients, run_dir=Path(tmp) / f"{hidden}-sa"
            )
            params = sum(t.numel() for t in plain.model.values())
            gap = max(float((secure.model[k] - plain.model[k]).abs().max()) for k in plain.model)
            ok = ok and plain.trained == secure.trained == args.clients
            ok = ok and (gap <= SMOKE_AGREEMENT or not args.smoke)
            rows.append(
                [
                    name,
                    f"{params:,}",
                    f"{plain.seconds_per_round:.3f}",
                    f"{secure.seconds_per_round:.3f}",
                    f"{secure.seconds_per_round - plain.seconds_per_round:+.3f}",
                    f"{secure.seconds_per_round / plain.seconds_per_round:.2f}x",
                    f"{plain.cpu_per_round:.3f}",
                    f"{secure.cpu_per_round:.3f}",
                    f"{secure.cpu_per_round - plain.cpu_per_round:+.3f}",
                    f"{plain.bytes_per_round:,.0f}",
                    f"{secure.bytes_per_round:,.0f}",
                    f"{gap:.1e}",
                    f"{plain.accuracy:.4f} / {secure.accuracy:.4f}",
                ]
            )
            print(f"  {name}: done in {time.perf_counter() - started:.1f} s", flush=True)
    print()
    print(
        table(
            [
                "model",
                "params",
                "plain s/round",
                "SecAgg+ s/round",
                "Δ s",
                "ratio",
                "plain CPU s/round",
                "SecAgg+ CPU s/round",
                "Δ CPU s",
                "plain B/round",
                "SecAgg+ B/round",
                "max |Δw| at the end",
                "test acc plain / SecAgg+",
            ],
            rows,
        )
    )
    if args.smoke:
        print(f"smoke: every client aggregated, models within {SMOKE_AGREEMENT:g}: {ok}")
    else:
        print(f"every client aggregated in every round: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
