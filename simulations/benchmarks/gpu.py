"""Benchmark: seconds per round on the CPU and on CUDA, sequential and batched engines.

Issue 16's workload: MNIST CNN, 100 clients of 600 images, 10 sampled per round, one
local epoch, B = 10, DP-SGD with a fixed noise multiplier (``target-epsilon = 0`` keeps
Opacus's noise calibration out of the timing). Each row is one in-process simulation in
this process with run-config ``device`` set, timed by the ServerApp: the median of the
rounds after the first (the first pays CUDA's context and kernel start-up). Rows:

- ``cpu``, ``inprocess``: today's sequential engine on the CPU, the reference (1.0x);
- ``cuda``, ``inprocess``: the same clients one after another on the GPU;
- ``cuda`` / ``cpu``, ``batched``: the batched engine of issue 13, where
  ``simulations.engines`` has it (left out, and said so, where it does not).

Goal (issue 16): batched on the GPU >= 20x sequential on the CPU. Without a CUDA device
the full mode prints ``skipped:`` and exits 0; so does it without ``mnist.npz``.

Run::

    .venv/bin/python -m simulations.benchmarks.gpu                 # needs CUDA and MNIST
    .venv/bin/python -m simulations.benchmarks.gpu --rounds 6 --engines inprocess
    .venv/bin/python -m simulations.benchmarks.gpu --smoke

``--smoke``: CPU only and tiny (digits MLP, 3 clients, 2 rounds): runs ``device = "cpu"``
and ``device = "auto"`` and fails unless they give the same weights and ε where ``auto``
is the CPU (a CPU-only machine); with CUDA present it checks ε only (the noise differs).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from simulations.benchmarks.machine import (
    SMOKE_HELP,
    data_dir_help,
    default_data_dir,
    has_mnist,
    header,
    skipped,
    table,
)

WORKLOAD: dict[str, Any] = {
    "dataset": "mnist",
    "model": "cnn",
    "fraction-train": 0.1,
    "local-epochs": 1,
    "batch-size": 10,
    "learning-rate": 0.1,
    "target-epsilon": 0,
    "noise-multiplier": 1.0,
}
NUM_CLIENTS = 100  # MNIST's 60,000 training images: 600 per client
SMOKE = {
    "num-server-rounds": 2,
    "batch-size": 32,
    "learning-rate": 0.5,
    "seed": 1,
    "target-epsilon": 0,
    "noise-multiplier": 1.0,
}
GOAL = 20.0  # batched on CUDA vs sequential on the CPU


def _simulate(values: dict[str, Any], *, num_clients: int, engine: str, root: Path):
    from simulations.simulate import simulate

    run_dir = root / f"{values.get('device', 'auto')}-{engine}-{time.monotonic_ns()}"
    return simulate({**values, "run-dir": str(run_dir)}, num_clients=num_clients, engine=engine)


def _row(result, *, device: str, engine: str) -> dict[str, Any]:
    steady = [r.seconds for r in result.rounds[1:]] or [result.rounds[0].seconds]
    return {
        "device": device,
        "engine": engine,
        "round_s": statistics.median(steady),
        "first_round_s": result.rounds[0].seconds,
        "accuracy": result.final.test_accuracy,
        "epsilon": result.final.epsilon_max,
    }


def _smoke(root: Path) -> int:
    import torch

    results = {}
    for device in ("cpu", "auto"):
        results[device] = _simulate(
            {**SMOKE, "device": device}, num_clients=3, engine="inprocess", root=root
        )
    cpu, auto = results["cpu"], results["auto"]
    if cpu.final.epsilon_max != auto.final.epsilon_max or not cpu.final.epsilon_max > 0:
        print(f"FAILED: ε differs: cpu {cpu.final.epsilon_max}, auto {auto.final.epsilon_max}")
        return 1
    if not torch.cuda.is_available():  # "auto" is the CPU here: bit for bit the same run
        weights = [torch.load(r.run_dir / "model.pt") for r in (cpu, auto)]
        if not all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]):
            print("FAILED: device = 'auto' on a CPU-only machine changed the weights")
            return 1
        print("no CUDA device: the CUDA rows of the full mode are left out")
    print(
        f"smoke ok: device cpu and auto, ε = {cpu.final.epsilon_max:.3f} (δ = 1e-05, RDP, "
        "record-level per client, composed over both rounds), accuracy "
        f"{cpu.final.test_accuracy:.4f} / {auto.final.test_accuracy:.4f}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per row (first excluded)")
    parser.add_argument(
        "--engines",
        nargs="+",
        default=["inprocess", "batched"],
        help="engines to time (batched only where simulations.engines has it)",
    )
    parser.add_argument("--data-dir", default=default_data_dir(), help=data_dir_help())
    args = parser.parse_args(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    with tempfile.TemporaryDirectory(prefix="fedmodel-gpu-bench-") as root:
        if args.smoke:
            return _smoke(Path(root))
        import torch

        from simulations.engines import ENGINES

        if not torch.cuda.is_available():
            return skipped(
                f"no CUDA device (torch {torch.__version__}, CUDA build "
                f"{torch.version.cuda or 'none'}); README 'GPU' has the install command"
            )
        if not has_mnist(args.data_dir):
            return skipped(f"no mnist.npz in {args.data_dir}")
        print(header("GPU: seconds per round, CPU vs CUDA, sequential vs batched"))
        print(f"device: {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})")
        engines = [e for e in args.engines if e in ENGINES]
        for missing in sorted(set(args.engines) - set(engines)):
            print(f"engine {missing!r} is not in simulations.engines: its rows are left out")
        values = {**WORKLOAD, "data-dir": args.data_dir, "num-server-rounds": args.rounds}
        rows = []
        for engine in engines:
            for device in ("cpu", "cuda"):
                result = _simulate(
                    {**values, "device": device},
                    num_clients=NUM_CLIENTS,
                    engine=engine,
                    root=Path(root),
                )
                rows.append(_row(result, device=device, engine=engine))
                print(f"  {device} {engine}: {rows[-1]['round_s']:.3f} s per round", flush=True)
    reference = next(
        r["round_s"] for r in rows if (r["device"], r["engine"]) == ("cpu", "inprocess")
    )
    print(
        table(
            [
                "device",
                "engine",
                "s / round",
                "first round s",
                "vs cpu sequential",
                "test acc",
                "ε max",
            ],
            [
                [
                    r["device"],
                    r["engine"],
                    f"{r['round_s']:.3f}",
                    f"{r['first_round_s']:.2f}",
                    f"{reference / r['round_s']:.1f}x",
                    f"{r['accuracy']:.4f}",
                    f"{r['epsilon']:.3f}",
                ]
                for r in rows
            ],
        )
    )
    print(
        f"ε: record-level per client, RDP accountant, δ = 1e-05, composed over the "
        f"{args.rounds} rounds' DP-SGD steps of the client that trained most; equal on "
        "both devices (it depends on σ, q and the steps only)"
    )
    batched = [r for r in rows if (r["device"], r["engine"]) == ("cuda", "batched")]
    if batched:
        speedup = reference / batched[0]["round_s"]
        verdict = "met" if speedup >= GOAL else "NOT met"
        print(f"goal batched-on-CUDA >= {GOAL:.0f}x sequential CPU: {speedup:.1f}x, {verdict}")
    return 0 if all(math.isfinite(r["round_s"]) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
