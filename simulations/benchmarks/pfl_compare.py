"""Benchmark (c): our in-process engine against pfl-research on the same non-DP MNIST job.

Workload: MNIST, 100 IID clients of 600 images (the same partition), 10 clients per
round, 1 local epoch, batch 10, SGD lr 0.1, fedmodel's CNN, central evaluation on the
10,000 test images after every round, no DP. Our side is ``simulate()``; pfl's is
``pfl_workload.py`` run by pfl's own virtual environment (pfl pins dp-accounting < 0.6,
which clashes with flwr, so it can never share ours). Runs alternate between the two.
CPU seconds per round (one torch thread: the work done, whatever else loads the machine):
ours from (R-round job - 1-round job) / (R - 1), pfl's per central iteration from a
callback, each the fastest; wall seconds: the fastest of rounds 2..R.

pfl's FedAvg also evaluates each sampled user's data before and after local training
(its default train metrics): that is part of what pfl does per round, and is counted.

Setup once, then run (not part of CI; needs ../shared/data/mnist.npz)::

    python3 -m venv /work/pflvenv
    /work/pflvenv/bin/pip install torch==2.13.0 "pfl[pytorch]"
    .venv/bin/python -m simulations.benchmarks.pfl_compare [--pfl-python /work/pflvenv/bin/python]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from simulations.benchmarks.machine import header, table
from simulations.benchmarks.overhead import DATA_DIR, harness_round_times, workloads

WORKLOAD = Path(__file__).with_name("pfl_workload.py")


def pfl_round_times(python: str, *, rounds: int, threads: int) -> tuple[list, list, float]:
    """Run the workload in pfl; wall and CPU seconds per round, final test accuracy."""
    result = subprocess.run(
        [
            python,
            str(WORKLOAD),
            "--rounds",
            str(rounds),
            "--data-dir",
            DATA_DIR,
            "--threads",
            str(threads),
        ],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pfl run failed:\n{result.stderr[-3000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return report["seconds"], report["cpu_seconds"], report["accuracy"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pfl-python", default="/work/pflvenv/bin/python")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repetitions", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    args = parser.parse_args(argv)
    if not Path(args.pfl_python).is_file():
        print(f"no pfl environment at {args.pfl_python}: see this file's docstring to create it")
        return 2
    if not Path(DATA_DIR, "mnist.npz").is_file():
        print(f"needs {DATA_DIR}/mnist.npz")
        return 2
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    workload = next(w for w in workloads(args.rounds) if w.name == "mnist-cnn")
    print(header("In-process engine vs pfl-research, non-DP MNIST"), flush=True)
    one_round = dataclasses.replace(workload, rounds=1)
    ours: dict[str, list[float]] = {"cpu": [], "wall": []}
    theirs: dict[str, list[float]] = {"cpu": [], "wall": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repetitions):
            # Ours: (R-round job - 1-round job) / (R - 1) cancels one-off costs.
            started = time.process_time()
            harness_round_times(one_round, Path(tmp))
            short = time.process_time() - started
            started = time.process_time()
            times, our_accuracy, _ = harness_round_times(workload, Path(tmp))
            ours["cpu"].append((time.process_time() - started - short) / (args.rounds - 1))
            ours["wall"] += times[1:]
            wall, cpu, pfl_accuracy = pfl_round_times(
                args.pfl_python, rounds=args.rounds, threads=args.threads
            )
            theirs["cpu"].append(min(cpu[1:]))
            theirs["wall"] += wall[1:]
            print(
                f"  CPU s/round: ours {min(ours['cpu']):.3f}, pfl {min(theirs['cpu']):.3f}",
                flush=True,
            )
    rows = []
    for name, side, accuracy in (
        ("fedmodel in-process", ours, our_accuracy),
        ("pfl-research 0.6.0", theirs, pfl_accuracy),
    ):
        rows.append(
            [
                name,
                min(side["cpu"]),
                min(side["cpu"]) / min(theirs["cpu"]),
                min(side["wall"]),
                min(side["wall"]) / min(theirs["wall"]),
                f"{accuracy:.4f}",
            ]
        )
    print(
        f"\nCost per round over rounds 2..{args.rounds}, {args.repetitions} repetitions, "
        f"{args.threads} torch thread(s), fastest; goal: ours <= pfl"
    )
    print(
        table(
            ["engine", "CPU s/round", "ratio (CPU)", "wall s/round", "ratio (wall)", "final acc"],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
