"""Benchmark: our in-process engine against pfl-research on the same non-DP MNIST job.

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

Needs mnist.npz in ``--data-dir``/``$FEDMODEL_DATA_DIR`` (default ../shared/data) and
pfl's environment, named by ``--pfl-python`` or ``$FEDMODEL_PFL_PYTHON``. Set it up once
(anywhere; ``PFLVENV`` is a folder of your choice), then run::

    python3 -m venv PFLVENV
    PFLVENV/bin/pip install torch==2.13.0 "pfl[pytorch]"
    export FEDMODEL_PFL_PYTHON=PFLVENV/bin/python
    .venv/bin/python -m simulations.benchmarks.pfl_compare [--rounds 5]
    .venv/bin/python -m simulations.benchmarks.pfl_compare --smoke

``--smoke``: 2 rounds of 2 clients, once each side; without pfl's environment or
mnist.npz it prints ``skipped: <reason>`` and exits 0 (both are optional), but a
``--pfl-python``/``$FEDMODEL_PFL_PYTHON`` that names no file is an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from simulations.benchmarks.machine import (
    SMOKE_HELP,
    data_dir_help,
    default_data_dir,
    has_mnist,
    header,
    skipped,
    table,
)
from simulations.benchmarks.overhead import harness_round_times, workloads

WORKLOAD = Path(__file__).with_name("pfl_workload.py")
PFL_PYTHON_ENV = "FEDMODEL_PFL_PYTHON"
SMOKE_PER_ROUND = 2


def pfl_round_times(
    python: str, *, rounds: int, threads: int, data_dir: str, clients: int, per_round: int
) -> tuple[list, list, float]:
    """Run the workload in pfl; wall and CPU seconds per round, final test accuracy."""
    result = subprocess.run(
        [
            python,
            str(WORKLOAD),
            "--rounds",
            str(rounds),
            "--clients",
            str(clients),
            "--per-round",
            str(per_round),
            "--data-dir",
            data_dir,
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


def pfl_version(python: str) -> str:
    """pfl-research's version in its own environment, for the table."""
    result = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('pfl'))"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.stdout.strip() if result.returncode == 0 else "(version unknown)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument(
        "--pfl-python",
        default=os.environ.get(PFL_PYTHON_ENV),
        help=f"the Python of pfl-research's own environment (default: ${PFL_PYTHON_ENV})",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repetitions", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument("--data-dir", default=default_data_dir(), help=data_dir_help())
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.repetitions = 2, 1
    missing = None
    if not args.pfl_python:
        missing = (
            f"no pfl-research environment: pass --pfl-python PATH or set {PFL_PYTHON_ENV} "
            "(how to create one: simulations/benchmarks/pfl_compare.py)"
        )
    elif not Path(args.pfl_python).is_file():
        # Named but not there: a broken setup, not an absent optional dependency.
        print(f"--pfl-python / ${PFL_PYTHON_ENV} names no file: {args.pfl_python}")
        return 2
    elif not has_mnist(args.data_dir):
        missing = f"needs {args.data_dir}/mnist.npz ({data_dir_help()})"
    if missing:
        if args.smoke:
            return skipped(missing)
        print(missing)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    workload = next(
        w for w in workloads(args.rounds, data_dir=args.data_dir) if w.name == "mnist-cnn"
    )
    if args.smoke:  # 2 clients a round instead of 10: the code paths, not the figures
        workload = dataclasses.replace(
            workload,
            config={**workload.config, "fraction-train": SMOKE_PER_ROUND / workload.clients},
        )
    per_round = round(float(workload.config["fraction-train"]) * workload.clients)
    print(header("In-process engine vs pfl-research, non-DP MNIST"), flush=True)
    one_round = dataclasses.replace(workload, rounds=1)
    ours: dict[str, list[float]] = {"cpu": [], "wall": []}
    theirs: dict[str, list[float]] = {"cpu": [], "wall": []}
    with tempfile.TemporaryDirectory() as tmp:
        # Untimed: what only a process's first job pays (lazy imports, the cached dataset)
        # would otherwise fall on the first 1-round job alone.
        harness_round_times(one_round, Path(tmp))
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
                args.pfl_python,
                rounds=args.rounds,
                threads=args.threads,
                data_dir=args.data_dir,
                clients=workload.clients,
                per_round=per_round,
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
        (f"pfl-research {pfl_version(args.pfl_python)}", theirs, pfl_accuracy),
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
