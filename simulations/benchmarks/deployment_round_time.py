"""Benchmark: seconds per round of a real loopback deployment against the same job in-process.

The job: 3 clients, the CNN on digits, DP-SGD (the run config's defaults otherwise),
``--rounds`` rounds. Three ways to run it, one after the other on the same machine:

- ``in-process``: ``simulations.simulate`` (the ServerApp calls the ClientApps directly);
- ``deployed, process per message``: a SuperLink and 3 SuperNodes on loopback, each a
  separate process, every message's ClientApp in a fresh ``flwr-clientapp`` process
  (Flower's default isolation; our ServerApp's prompt reply polling, 1 torch thread
  per node and a 0.1 s launcher poll apply to both deployed rows);
- ``deployed, warm``: the same with ``--isolation process`` and
  ``server.deployment.warm_executor`` (imports once, forks per message) -- what
  ``fedmodel deploy-local`` runs.

Every deployed round also pays Flower's fixed polls: a SuperNode with no work asks its
SuperLink every 3 s (``flwr/supernode/start_client_internal.py``, not configurable in
1.42), and returns a reply after a 0.5 s check. Round 1 of each run (first message:
FAB install, first loads) is left out of the median. The identical accuracy of all
three is a check that they ran the same job.

Run (not part of CI; takes a few minutes)::

    .venv/bin/python -m simulations.benchmarks.deployment_round_time [--rounds 6] [--no-cold]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fedmodel.results import load_metrics
from server.deployment.local_federation import LocalFederation
from simulations.benchmarks.machine import header, table

CLIENTS = 3


def job(rounds: int) -> dict[str, object]:
    return {"model": "cnn", "dataset": "digits", "num-server-rounds": rounds, "seed": 0}


def in_process(rounds: int, work: Path) -> list:
    from simulations.simulate import simulate

    result = simulate({**job(rounds), "run-dir": str(work / "inprocess")}, num_clients=CLIENTS)
    return result.rounds


def deployed(rounds: int, work: Path, *, warm: bool) -> tuple[list, float]:
    name = "warm" if warm else "cold"
    started = time.perf_counter()
    with LocalFederation(work / name, num_nodes=CLIENTS, warm=warm) as federation:
        run_dir = work / name / "run"
        outcome = federation.submit({**job(rounds), "run-dir": str(run_dir)}, timeout=1800)
        if not outcome.succeeded:
            sys.exit(f"{name} run ended {outcome.status}:\n{outcome.log[-2000:]}")
    return load_metrics(run_dir), time.perf_counter() - started


def median_round(rounds: list) -> float:
    return statistics.median(r.seconds for r in rounds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--no-cold", action="store_true", help="skip Flower's default isolation")
    args = parser.parse_args()
    print(header("Per-round wall time: loopback deployment vs in-process (3 clients, CNN, digits)"))
    with tempfile.TemporaryDirectory(prefix="fedmodel-bench-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        base = in_process(args.rounds, work)
        results = [("in-process", base, time.perf_counter() - started)]
        if not args.no_cold:
            cold = deployed(args.rounds, work, warm=False)
            results.append(("deployed, process per message", *cold))
        results.append(("deployed, warm (deploy-local)", *deployed(args.rounds, work, warm=True)))
    reference = median_round(base)
    rows = [
        (
            name,
            f"{median_round(rounds):.2f}",
            f"{median_round(rounds) / reference:.2f}x",
            f"{rounds[0].seconds:.2f}",
            f"{total:.1f}",
            f"{rounds[-1].test_accuracy:.4f}",
        )
        for name, rounds, total in results
    ]
    columns = (
        "engine",
        "s/round (median, rounds 2+)",
        "vs in-process",
        "round 1 s",
        "whole job s",
        "final test acc",
    )
    print(table(columns, rows))


if __name__ == "__main__":
    main()
