"""Benchmark: seconds per round of a real loopback deployment against the same job in-process.

The job: 3 clients (``--clients``), the CNN on digits, DP-SGD (the run config's defaults
otherwise), ``--rounds`` rounds. Three ways to run it, one after the other on the same machine:

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
three is a check that they ran the same job: the run fails (exit 1) if they differ.

Run (takes a few minutes)::

    .venv/bin/python -m simulations.benchmarks.deployment_round_time [--rounds 6] [--no-cold]
    .venv/bin/python -m simulations.benchmarks.deployment_round_time --smoke

Deployed nodes draw DP noise from the seeded source (node config ``noise-source =
"seeded"``), as the in-process run's simulated nodes do, so that all runs are the same
job; a deployed node's default, secure noise, costs a little more per step
(``noise_source.py``) and makes every run different.

``--smoke``: 2 clients, 1 round, in-process and the warm deployment only.
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
from simulations.benchmarks.machine import SMOKE_HELP, header, table

CLIENTS = 3


def job(rounds: int) -> dict[str, object]:
    return {"model": "cnn", "dataset": "digits", "num-server-rounds": rounds, "seed": 0}


def in_process(rounds: int, work: Path, *, clients: int = CLIENTS) -> list:
    from simulations.simulate import simulate

    result = simulate({**job(rounds), "run-dir": str(work / "inprocess")}, num_clients=clients)
    return result.rounds


def deployed(
    rounds: int, work: Path, *, warm: bool, clients: int = CLIENTS
) -> tuple[list, float]:
    name = "warm" if warm else "cold"
    started = time.perf_counter()
    # Seeded noise, as the in-process run's simulated nodes: the same job, so the same
    # accuracy (a deployed node's default, secure noise, would change every draw).
    seeded = [{"noise-source": "seeded"}] * clients
    with LocalFederation(
        work / name, num_nodes=clients, warm=warm, node_configs=seeded
    ) as federation:
        run_dir = work / name / "run"
        outcome = federation.submit({**job(rounds), "run-dir": str(run_dir)}, timeout=1800)
        if not outcome.succeeded:
            sys.exit(f"{name} run ended {outcome.status}:\n{outcome.log[-2000:]}")
    return load_metrics(run_dir), time.perf_counter() - started


def median_round(rounds: list) -> float:
    """Median seconds of rounds 2.. (round 1 pays first loads); of round 1 if it is alone."""
    return statistics.median(r.seconds for r in rounds[1:] or rounds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--no-cold", action="store_true", help="skip Flower's default isolation")
    args = parser.parse_args(argv)
    if args.smoke:
        # One round: every code path runs; Flower's 3 s polls make each round costly.
        args.rounds, args.clients, args.no_cold = 1, 2, True
    print(
        header(
            f"Per-round wall time: loopback deployment vs in-process "
            f"({args.clients} clients, CNN, digits)"
        )
    )
    with tempfile.TemporaryDirectory(prefix="fedmodel-bench-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        base = in_process(args.rounds, work, clients=args.clients)
        results = [("in-process", base, time.perf_counter() - started)]
        if not args.no_cold:
            cold = deployed(args.rounds, work, warm=False, clients=args.clients)
            results.append(("deployed, process per message", *cold))
        warm = deployed(args.rounds, work, warm=True, clients=args.clients)
        results.append(("deployed, warm (deploy-local)", *warm))
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
    accuracies = {name: rounds[-1].test_accuracy for name, rounds, _ in results}
    if len(set(accuracies.values())) > 1:
        print(f"FAILED: the runs ended with different accuracies: {accuracies}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
