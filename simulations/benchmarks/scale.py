"""Benchmark: memory and time per round as the number of Synthetic clients grows.

Each federation runs ``fedmodel simulate`` in a fresh process: Synthetic(1, 1) clients
(FedProx; power-law sizes), 100 sampled per round (``--per-round``), DP-SGD on. The
table shows the peak resident memory of the whole process tree (sampled from /proc
every 0.1 s) and the kernel's own peak of the main process (``wait4``) and the
steady-state seconds per round (median of rounds 2..; round 1 pays imports and first
calls), with ratios against the smallest federation measured in the same run. Goals:
peak RSS under 2 GB at 10,000 clients; time per round independent of the number of
clients (ratio ~1).

A fixed noise multiplier (``target-epsilon = 0``) is used: calibrating the noise to a
target ε costs 1-5 s per distinct client sampling rate (Opacus's search, cached per
rate), which would measure the accountant rather than the engine.

Run::

    .venv/bin/python -m simulations.benchmarks.scale                 # 1,000 and 10,000
    .venv/bin/python -m simulations.benchmarks.scale --rounds 5 --clients 1000 10000 --workers 2
    .venv/bin/python -m simulations.benchmarks.scale --smoke         # 20 and 200, 5 per round

``--smoke``: 20 and 200 clients, 5 per round, 2 rounds; fails if a run fails or writes
no privacy ledger.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from simulations.benchmarks.machine import SMOKE_HELP, fedmodel_command, header, table

PER_ROUND = 100
CONFIG = {
    "dataset": "synthetic",
    "synthetic-alpha": 1.0,
    "synthetic-beta": 1.0,
    "model": "mlp",
    "batch-size": 32,
    "learning-rate": 0.1,
    "target-epsilon": 0,
    "noise-multiplier": 1.0,
}


def run_federation(
    num_clients: int, *, rounds: int, workers: int, root: Path, per_round: int = PER_ROUND
) -> dict[str, float]:
    """One ``fedmodel simulate`` process; its peak memory and its rounds' seconds."""
    run_dir = root / f"clients-{num_clients}"
    settings = {**CONFIG, "fraction-train": per_round / num_clients, "num-server-rounds": rounds}
    command = fedmodel_command("simulate", "--clients", str(num_clients), "--workers",
                               str(workers), "--run-dir", str(run_dir), "--no-plots",
                               "--no-progress")
    for key, value in settings.items():
        command += ["--set", f"{key}={json.dumps(value)}"]
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
        peak = {"rss": 0}
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak["rss"] = max(peak["rss"], tree_rss(process.pid))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # wait4: this child's own peak (ru_maxrss, KiB on Linux), not a running maximum.
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        sampler.join()
        wall = time.perf_counter() - started
        if process.returncode != 0:
            errors.seek(0)
            raise RuntimeError(f"{' '.join(command)} failed:\n{errors.read()[-3000:]}")
    rows = json.loads((run_dir / "metrics.json").read_text())
    seconds = [row["seconds"] for row in rows]
    return {
        "clients": num_clients,
        "peak_rss_mb": peak["rss"] / 2**20,
        "max_process_rss_mb": usage.ru_maxrss / 1024,
        "round_s": statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0],
        "first_round_s": seconds[0],
        "wall_s": wall,
        "accuracy": rows[-1]["test_accuracy"],
        "ledgers": len(list((run_dir / "privacy").glob("*.json"))),
    }


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants, from /proc (Linux)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, p in parents.items() if p == parent and child not in tree]
        tree.update(children)
        frontier += children
    total = 0
    for member in tree:
        try:
            resident_pages = int(Path(f"/proc/{member}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        total += resident_pages * os.sysconf("SC_PAGE_SIZE")
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--clients", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--per-round", type=int, default=PER_ROUND, help="clients per round")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args(argv)
    if args.smoke:
        args.clients, args.per_round, args.rounds = [20, 200], 5, 2
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    print(
        header(f"Scale: Synthetic(1, 1) clients, {args.per_round} per round"), flush=True
    )
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for num_clients in sorted(args.clients):
            result = run_federation(
                num_clients,
                rounds=args.rounds,
                workers=args.workers,
                root=Path(root),
                per_round=args.per_round,
            )
            print(f"  {num_clients} clients: {result}", flush=True)
            rows.append(result)
    base = rows[0]
    print(
        table(
            ["clients", "peak RSS (tree) MB", "main process peak MB", "s/round (median 2..)",
             "ratio", "round 1 s", "wall s", "final acc", "ledgers written"],
            [
                [r["clients"], r["peak_rss_mb"], r["max_process_rss_mb"], r["round_s"],
                 r["round_s"] / base["round_s"], r["first_round_s"], r["wall_s"],
                 r["accuracy"], r["ledgers"]]
                for r in rows
            ],
        )
    )
    print(f"goals: peak RSS < 2048 MB at 10,000 clients; s/round ratio ~1 (vs {base['clients']})")
    if not all(r["ledgers"] for r in rows):  # DP is on: every client that trained has one
        print("FAILED: a federation wrote no privacy ledger")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
