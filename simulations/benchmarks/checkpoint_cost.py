"""Benchmark: seconds per round that checkpointing adds (``checkpoint-every = 1`` vs ``0``).

One job, run in this process twice per repetition: without checkpoints
(``checkpoint-every = 0``) and with one after every round (``checkpoint-every = 1``, the
default), off first, then on. Default job: the MNIST CNN (``../shared/data/mnist.npz``, or
``--data-dir``; the digits CNN when MNIST is absent), DP-SGD with target ε 8, 100 clients
of which 10 train per round, 5 rounds. Measured per run:

- the checkpoint itself: wall-clock seconds of each ``RunCheckpoints.save`` (the in-process
  engine's ``clients.pt`` of every node's Context, then the server's ``server.pt``: weights,
  strategy, recorder, RNG states; each written atomically with fsync of file and folder);
- the round: the run's own seconds per round (``metrics.json``), median of rounds 2 on
  (round 1 pays the noise calibration); a checkpoint falls into the next round's seconds.

The figure is the median checkpoint over the median round without checkpoints (goal: under
2%); the difference of the two runs' round medians is printed too, but on a loaded machine
it is noise of the same order as the checkpoint.

Run::

    .venv/bin/python -m simulations.benchmarks.checkpoint_cost            # full (minutes)
    .venv/bin/python -m simulations.benchmarks.checkpoint_cost --smoke    # CI: seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fedmodel.results.checkpoint import CLIENTS_FILE, SERVER_FILE, Checkpoint, checkpoint_dir
from server.checkpointing import RunCheckpoints
from simulations.benchmarks.machine import (
    SMOKE_HELP,
    data_dir_help,
    default_data_dir,
    has_mnist,
    header,
    table,
)


class TimedSaves:
    """Wrap ``RunCheckpoints.save`` for a while: note the wall-clock seconds of each call."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._original = RunCheckpoints.save

    def __enter__(self) -> TimedSaves:
        original, seconds = self._original, self.seconds

        def timed(checkpoints: RunCheckpoints, *args: Any, **kwargs: Any) -> None:
            started = time.perf_counter()
            original(checkpoints, *args, **kwargs)
            seconds.append(time.perf_counter() - started)

        RunCheckpoints.save = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        RunCheckpoints.save = self._original  # type: ignore[method-assign]


def run_job(config: dict[str, Any], *, clients: int, every: int, run_dir: Path) -> dict[str, Any]:
    """One run of the job with ``checkpoint-every = every``; its timings."""
    from simulations import simulate

    with TimedSaves() as saves:
        started = time.perf_counter()
        result = simulate(
            {**config, "checkpoint-every": every, "run-dir": str(run_dir)}, num_clients=clients
        )
        wall = time.perf_counter() - started
    rounds = [r.seconds for r in result.rounds]
    folder = checkpoint_dir(run_dir)
    if every and Checkpoint.load(run_dir).round != config["num-server-rounds"]:
        raise RuntimeError(f"{run_dir}: the last checkpoint is not of the last round")
    if not every and folder.exists():
        raise RuntimeError(f"{run_dir}: checkpoint-every = 0 wrote a checkpoint")
    return {
        "every": every,
        "round": statistics.median(rounds[1:] or rounds),
        "saves": saves.seconds,
        "wall": wall,
        "accuracy": result.final.test_accuracy,
        "server_kb": (folder / SERVER_FILE).stat().st_size / 1024 if every else 0.0,
        "clients_kb": (folder / CLIENTS_FILE).stat().st_size / 1024 if every else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--data-dir", default=default_data_dir(), help=data_dir_help())
    parser.add_argument("--rounds", type=int, default=None, help="default 5 (smoke: 2)")
    parser.add_argument("--clients", type=int, default=None, help="default 100 (smoke: 3)")
    parser.add_argument(
        "--per-round", type=int, default=10, help="clients trained per round (default 10)"
    )
    parser.add_argument("--repetitions", type=int, default=1, help="off/on pairs (default 1)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.smoke else 5)
    clients = args.clients or (3 if args.smoke else 100)
    mnist = not args.smoke and has_mnist(args.data_dir)
    config: dict[str, Any] = {
        "num-server-rounds": rounds,
        "model": "mlp" if args.smoke else "cnn",
        "dataset": "mnist" if mnist else "digits",
        "data-dir": args.data_dir if mnist else "",
        "fraction-train": min(1.0, args.per_round / clients),
        "batch-size": 32 if args.smoke else 64,
    }
    if args.smoke:  # fixed noise: no calibration to wait for
        config.update({"target-epsilon": 0, "noise-multiplier": 1.0})
    print(header("Checkpoint cost per round (checkpoint-every = 1 vs 0)"), flush=True)
    data = "MNIST" if mnist else "digits" + ("" if args.smoke else " (no mnist.npz in --data-dir)")
    print(f"job: {config['model']} on {data}, {clients} clients, {config}", flush=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="checkpoint-cost-") as work:
        for repetition in range(args.repetitions):
            for every in (0, 1):
                run_dir = Path(work) / f"{repetition}-every-{every}"
                runs.append(run_job(config, clients=clients, every=every, run_dir=run_dir))
                print(f"  run {len(runs)}: every {every}: {runs[-1]['wall']:.1f} s", flush=True)
    off = [r for r in runs if r["every"] == 0]
    on = [r for r in runs if r["every"] == 1]
    if {r["accuracy"] for r in runs} != {off[0]["accuracy"]}:
        raise RuntimeError("checkpoints changed the run's result: " + str(runs))
    round_off = statistics.median(r["round"] for r in off)
    round_on = statistics.median(r["round"] for r in on)
    save = statistics.median(s for r in on for s in r["saves"])
    rows = [
        ["checkpoint-every = 0", f"{round_off:.3f}", "-", "-", "-"],
        [
            "checkpoint-every = 1",
            f"{round_on:.3f}",
            f"{save * 1000:.1f}",
            f"{100 * save / round_off:.2f}%",
            f"{on[0]['server_kb']:.0f} + {on[0]['clients_kb']:.0f}",
        ],
    ]
    print(
        f"\nmedian s per round (rounds 2-{rounds}), median checkpoint (wall, fsync included) "
        f"over {len(on) * rounds} checkpoints; same final accuracy in every run "
        f"({off[0]['accuracy']:.4f})"
    )
    print(
        table(
            ["run", "s per round", "checkpoint ms", "of a round", "server.pt + clients.pt KiB"],
            rows,
        )
    )
    print(
        f"difference of the round medians (on - off): {round_on - round_off:+.3f} s "
        "(machine noise included)"
    )
    if not args.smoke and save / round_off >= 0.02:
        print(f"goal missed: a checkpoint costs {100 * save / round_off:.2f}% of a round (>= 2%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
