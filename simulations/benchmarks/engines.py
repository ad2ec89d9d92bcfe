"""Benchmark: Flower's Ray simulation engine against the in-process engine.

The same ServerApp and ClientApp, the same workload, each engine in a fresh
``fedmodel simulate`` process (imports included): the in-process engine alone and with
worker processes, and Flower's Simulation Engine (``--engine ray``: a SuperLink, then
``flwr-simulation`` with one Ray actor per worker). Measured per run:

- start-up: wall time of the whole command minus the steady rounds, i.e. from process
  start to the end of round 1 (imports, SuperLink and Ray start, first calls);
- steady-state seconds per round: median of rounds 2.., as timed by the ServerApp.

With ``--repeat N`` the engines run N times each, interleaved, and the table shows medians
(a shared machine's load drifts during a run).

Ratios are against the in-process engine without workers, measured in the same run.
Workloads: digits MLP, 10 clients all training each round (DP-SGD, fixed noise); with
mnist.npz in ``--data-dir``/``$FEDMODEL_DATA_DIR`` (default ../shared/data), MNIST CNN,
100 clients of 600 images, 10 per round (E=1, B=10, DP-SGD). A fixed noise multiplier
(``target-epsilon = 0``) keeps Opacus's noise calibration (1-5 s per process) out of the
engine comparison. Without Ray installed the Ray rows are left out (said in the output).

Run::

    .venv/bin/python -m simulations.benchmarks.engines
    .venv/bin/python -m simulations.benchmarks.engines --rounds 10 --workers 2 \
        --workloads digits-mlp-dp --repeat 3
    .venv/bin/python -m simulations.benchmarks.engines --smoke

``--smoke``: digits, 2 rounds, the in-process engine alone and with 1 worker, and Ray
with 1 actor (if installed); fails if a run fails or, since every digits client trains
every round, if the engines' final accuracies differ.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from simulations.benchmarks.machine import (
    SMOKE_HELP,
    data_dir_help,
    default_data_dir,
    fedmodel_command,
    has_mnist,
    header,
    table,
)

COMMON = {"target-epsilon": 0, "noise-multiplier": 1.0}
WORKLOADS = {
    "digits-mlp-dp": (10, {"dataset": "digits", "model": "mlp", "batch-size": 32,
                           "learning-rate": 0.5, **COMMON}),
    "mnist-cnn-dp": (100, {"dataset": "mnist", "model": "cnn",
                           "fraction-train": 0.1, "local-epochs": 1, "batch-size": 10,
                           "learning-rate": 0.1, **COMMON}),
}


def run(
    name: str, *, engine: str, workers: int, rounds: int, root: Path, data_dir: str
) -> dict[str, object]:
    num_clients, settings = WORKLOADS[name]
    if settings["dataset"] == "mnist":
        settings = {**settings, "data-dir": data_dir}
    run_dir = root / f"{name}-{engine}-{workers}"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    command = fedmodel_command("simulate", "--engine", engine, "--workers", str(workers),
                               "--clients", str(num_clients), "--run-dir", str(run_dir),
                               "--no-plots", "--no-progress")
    for key, value in {**settings, "num-server-rounds": rounds}.items():
        command += ["--set", f"{key}={json.dumps(value)}"]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    rows = json.loads((run_dir / "metrics.json").read_text())
    steady = [row["seconds"] for row in rows[1:]]
    return {
        "workload": name,
        "engine": engine + (f" ({workers} workers)" if workers else ""),
        "startup_s": wall - sum(steady),
        "round_s": statistics.median(steady),
        "accuracy": rows[-1]["test_accuracy"],
        "epsilon": rows[-1]["epsilon_max"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="workers / Ray actors")
    parser.add_argument(
        "--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS),
        help="default: both (MNIST only when mnist.npz is in --data-dir)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per engine, interleaved; medians shown"
    )
    parser.add_argument("--data-dir", default=default_data_dir(), help=data_dir_help())
    args = parser.parse_args(argv)
    if args.smoke:
        # Ray's start-up (25-45 s on the 2-core machine) dominates; enough to run each path.
        args.rounds, args.workers, args.repeat, args.workloads = 2, 1, 1, ["digits-mlp-dp"]
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    names = [n for n in args.workloads if n != "mnist-cnn-dp" or has_mnist(args.data_dir)]
    engines = [("inprocess", 0), ("inprocess", args.workers), ("ray", args.workers)]
    if importlib.util.find_spec("ray") is None:  # Ray is optional (flwr[simulation])
        print("Ray is not installed: its rows are left out")
        engines = engines[:2]
    print(header("Engines: Flower's Ray simulation engine vs the in-process engine"), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for name in names:
            runs: dict[tuple[str, int], list[dict[str, object]]] = {e: [] for e in engines}
            for repetition in range(args.repeat):
                for engine, workers in engines:
                    result = run(name, engine=engine, workers=workers, rounds=args.rounds,
                                 root=Path(root) / str(repetition), data_dir=args.data_dir)
                    print(f"  {result}", flush=True)
                    runs[(engine, workers)].append(result)
            medians = [
                {**found[0], **{key: statistics.median(r[key] for r in found)
                                for key in ("startup_s", "round_s", "accuracy")}}
                for found in runs.values()
            ]
            for result in medians:
                result["startup_ratio"] = result["startup_s"] / medians[0]["startup_s"]
                result["round_ratio"] = result["round_s"] / medians[0]["round_s"]
            rows += medians
    print(
        table(
            ["workload", "engine", "start-up s", "x", "s/round (median 2..)", "x",
             "final acc", "max ε"],
            [[r["workload"], r["engine"], r["startup_s"], r["startup_ratio"], r["round_s"],
              r["round_ratio"], r["accuracy"], r["epsilon"]] for r in rows],
        )
    )
    print(
        f"x: ratio to the in-process engine without workers, same workload, same run; "
        f"medians of {args.repeat} interleaved run(s) per engine"
    )
    if args.smoke:
        # Every digits client trains every round, so all engines must end alike.
        accuracies = {r["engine"]: r["accuracy"] for r in rows}
        if len(set(accuracies.values())) > 1:
            print(f"FAILED: the engines ended with different accuracies: {accuracies}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
