"""Benchmark: harness overhead of the in-process engine against a bare PyTorch loop.

The bare loop does exactly the client training the harness does, in one process, with
no Flower: the same data and partitions (``fedmodel.data``), the same model, the same
client sampling (``random.sample`` seeded as the ServerApp seeds it), the same seeds
per (round, client), the same DP-SGD through Opacus as ``train_locally`` (Poisson
sampling, the run config's ``grad-sample-mode`` with the criterion handed to
``make_private``, summed loss over the expected batch size, clip, noise, a privacy
ledger per client queried for ε after each client's training, as the ClientApp does),
FedAvg in Flower's order weighted as the ClientApp reports (examples; under DP the
public ceil(N / B) * B), and the same central evaluation on the test set after each
round. With the same seed both end with the same weights: the table shows the largest
difference as a check that the work is the same, and the run fails (exit 1) if they
differ. The bare loop is written as a user would write it with PyTorch: batches from a
``DataLoader``, ``torch.manual_seed`` per client, one model reused. The harness takes the
same batches by indexing the dataset's tensors (``fedmodel/training/tensor_batches.py``)
and seeds only the CPU generator, which costs less per step and gives the same numbers.

Measured, per workload, in this one process (alternating harness and bare runs):

- steady-state cost per round: CPU seconds of an R-round job minus those of a 1-round
  job, over R - 1 (one-off costs cancel; with one torch thread, CPU time is the work
  done, whatever else loads the machine), the fastest of each side's repetitions; and,
  beside it, the ratio of the fastest wall-clock rounds 2..R. Goal: harness <= 1.10x.

And in fresh subprocesses (imports included, goal < 3 s): the time from process start
to the first round's training (harness: ``fedmodel simulate``; bare: this file's
``--bare-startup`` probe).

Run (MNIST workloads need mnist.npz in ``--data-dir``/``$FEDMODEL_DATA_DIR``, default
../shared/data; else only digits)::

    .venv/bin/python -m simulations.benchmarks.overhead            # all workloads
    .venv/bin/python -m simulations.benchmarks.overhead --quick    # fewer rounds
    .venv/bin/python -m simulations.benchmarks.overhead --smoke    # CI: digits, 2 rounds
    .venv/bin/python -m simulations.benchmarks.overhead --profile mnist-cnn-dp

``--smoke`` runs both digits workloads for 2 rounds once each side, without the start-up
probes, and fails if the harness or the bare loop crashes or their weights differ.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import random
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from simulations.benchmarks.machine import (
    SMOKE_HELP,
    data_dir_help,
    default_data_dir,
    fedmodel_command,
    has_mnist,
)

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

# Harness and bare loop must end with the same weights (bit-identical so far).
SAME_WEIGHTS_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Workload:
    name: str
    clients: int
    config: dict[str, object]
    rounds: int


def workloads(
    rounds: int, *, data_dir: str | None = None, digits_rounds: int | None = None
) -> list[Workload]:
    """MNIST CNN, 100 clients (10 per round), if mnist.npz is there; digits MLP, 10 clients.

    Each with and without DP. Digits rounds are short, so they run ``digits_rounds``
    (default ``3 * rounds``) rounds.
    """
    data_dir = default_data_dir() if data_dir is None else data_dir
    mnist = {
        "dataset": "mnist",
        "data-dir": data_dir,
        "model": "cnn",
        "fraction-train": 0.1,
        "local-epochs": 1,
        "batch-size": 10,
        "learning-rate": 0.1,
        "noise-multiplier": 1.0,
        "target-epsilon": 0,  # the same σ in both (no per-client calibration)
    }
    digits = {"dataset": "digits", "model": "mlp", "target-epsilon": 0}
    found = has_mnist(data_dir)
    digits_rounds = 3 * rounds if digits_rounds is None else digits_rounds
    chosen = []
    for dp in (True, False):
        suffix = "-dp" if dp else ""
        if found:
            chosen.append(Workload(f"mnist-cnn{suffix}", 100, {**mnist, "dp": dp}, rounds))
        chosen.append(Workload(f"digits-mlp{suffix}", 10, {**digits, "dp": dp}, digits_rounds))
    return chosen


# -- the harness --------------------------------------------------------------------------


def harness_round_times(workload: Workload, root: Path, *, engine: str = "inprocess"):
    """Run the workload with ``simulate()``; per-round seconds and the final weights."""
    import torch

    from simulations.simulate import simulate

    run_dir = Path(tempfile.mkdtemp(dir=root))
    config = {**workload.config, "num-server-rounds": workload.rounds, "run-dir": str(run_dir)}
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        result = simulate(config, num_clients=workload.clients, engine=engine)
    weights = torch.load(run_dir / "model.pt")
    return [r.seconds for r in result.rounds], result.final.test_accuracy, weights


# -- the bare loop ------------------------------------------------------------------------


def bare_round_times(workload: Workload, *, on_first_round=None):
    """The same federated job as a plain loop: Opacus + PyTorch + numpy FedAvg.

    Client training is ``fedmodel.training.train_locally`` written out: keep the two in
    step (the weight check in :func:`measure` fails when they drift apart).
    """
    import numpy as np
    import torch
    from opacus import PrivacyEngine
    from torch import nn
    from torch.utils.data import DataLoader

    from fedmodel.config import RunConfig
    from fedmodel.data import load_partition, load_splits
    from fedmodel.models import build_model
    from fedmodel.privacy import PrivacyLedger
    from fedmodel.training import evaluate
    from fedmodel.training.poisson_sampling import poisson_loader

    config = RunConfig.from_mapping({**workload.config, "num-server-rounds": workload.rounds})
    random.seed(config.seed)  # as the ServerApp: Flower samples clients with `random`
    torch.manual_seed(config.seed)
    splits = load_splits(config)
    model = build_model(
        config.model,
        input_shape=splits.input_shape,
        num_classes=splits.num_classes,
        hidden_sizes=config.hidden_layer_sizes,
    )
    clients = [
        load_partition(config, partition_id=i, num_partitions=workload.clients)
        for i in range(workload.clients)
    ]
    # The ClientApp's ledger: an Opacus RDP accountant plus fedmodel's ε computation
    # (Opacus's own get_epsilon costs ~0.2 s a call and would make the bare loop slower).
    ledgers = [PrivacyLedger(accountant="rdp", delta=config.delta) for _ in clients]
    global_state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    evaluate(model, splits.test)  # the harness evaluates the initial model (round 0)
    per_round = int(workload.clients * config.fraction_train)
    times = []
    for server_round in range(1, config.num_server_rounds + 1):
        if server_round == 1 and on_first_round:
            on_first_round()
        started = time.perf_counter()
        updates = []
        for cid in random.sample(range(workload.clients), per_round):
            entropy = [config.seed, server_round, cid]
            seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
            model.load_state_dict({k: torch.from_numpy(v) for k, v in global_state.items()})
            dataset = clients[cid]
            batches = -(-len(dataset) // config.batch_size)
            expected_batch = len(dataset) / batches
            generator = torch.Generator().manual_seed(seed)
            torch.manual_seed(seed)
            if config.dp:
                # As train_locally: fedmodel's Poisson sampler (ceil(N / B) batches at rate
                # 1 / ceil(N / B)) drawing from the seeded generator, Opacus's draw.
                loader = poisson_loader(
                    dataset,
                    batch_size=config.batch_size,
                    bernoulli=lambda n, p, g=generator: torch.rand(n, generator=g) < p,
                )
            else:
                loader = DataLoader(
                    dataset, batch_size=config.batch_size, shuffle=True, generator=generator
                )
            optimizer = torch.optim.SGD(
                model.parameters(), lr=config.learning_rate, momentum=config.momentum
            )
            criterion: nn.Module = nn.CrossEntropyLoss(reduction="sum")
            trained: nn.Module = model
            model.train()
            if config.dp:
                engine = PrivacyEngine(accountant=ledgers[cid].accountant_name)
                engine.accountant = ledgers[cid].accountant
                # As train_locally: the criterion goes to make_private, which in ghost mode
                # (the default) wraps it to drive ghost clipping's second backward pass and
                # returns it as a fourth value; the other modes return three.
                prepared = engine.make_private(
                    module=model,
                    optimizer=optimizer,
                    criterion=criterion,
                    data_loader=loader,
                    noise_multiplier=config.noise_multiplier,
                    max_grad_norm=config.max_grad_norm / expected_batch,
                    loss_reduction="sum",
                    poisson_sampling=False,  # the loader above samples, as in train_locally
                    grad_sample_mode=config.grad_sample_mode,
                    noise_generator=torch.Generator().manual_seed(seed + 1),
                )
                if config.grad_sample_mode == "ghost":
                    trained, optimizer, criterion, loader = prepared
                else:
                    trained, optimizer, loader = prepared
            trained.train()
            for _ in range(config.local_epochs):
                for x, y in loader:
                    optimizer.zero_grad(set_to_none=True)
                    loss = criterion(trained(x), y) / expected_batch
                    loss.backward()
                    optimizer.step()
            if config.dp:
                if hasattr(trained, "_close"):
                    trained._close()  # unhook Opacus, as train_locally does
                ledgers[cid].epsilon()  # ε reported per client, as the ClientApp does
            state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
            # FedAvg weight as the ClientApp reports it: under DP the public ceil(N / B) * B
            # (implied by the ledger's q and steps), not the private N.
            weight = batches * config.batch_size if config.dp else len(dataset)
            updates.append((weight, state))
        total = sum(n for n, _ in updates)
        average: dict[str, np.ndarray] = {}
        for n, state in updates:  # Flower's aggregate_arrayrecords, same order and dtype
            for key, value in state.items():
                if key in average:
                    average[key] += value * (n / total)
                else:
                    average[key] = value * (n / total)
        global_state = average
        model.load_state_dict({k: torch.from_numpy(v) for k, v in global_state.items()})
        _, accuracy = evaluate(model, splits.test)
        times.append(time.perf_counter() - started)
    return times, accuracy, {k: torch.from_numpy(v) for k, v in global_state.items()}


# -- start-up in a fresh process ------------------------------------------------------------


def startup_seconds(workload: Workload, *, bare: bool, data_dir: str) -> float:
    """Seconds from starting a fresh Python to the start of round 1's client training."""
    if bare:
        command = [
            sys.executable,
            "-u",
            "-m",
            "simulations.benchmarks.overhead",
            "--data-dir",
            data_dir,
            "--bare-startup",
            workload.name,
        ]
    else:
        command = fedmodel_command(
            "simulate", "--clients", str(workload.clients), "--no-plots", "--no-progress"
        )
        config = {**workload.config, "num-server-rounds": 1}
        for key, value in config.items():
            text = str(value).lower() if isinstance(value, bool) else repr(value)
            command += ["--set", f"{key}={text}".replace("'", '"')]
    with tempfile.TemporaryDirectory() as tmp:
        if not bare:
            command += ["--run-dir", str(Path(tmp) / "run")]
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path.cwd())},
        )
        try:
            for line in process.stdout:  # type: ignore[union-attr]
                if line.startswith("FIRST ROUND"):  # bare probe
                    return time.perf_counter() - started
                if line.startswith("round 1/"):
                    # The line ends "| <seconds of round 1> s": subtract the round itself.
                    return time.perf_counter() - started - float(line.rsplit("|", 1)[1][:-3])
        finally:
            process.kill()
            process.wait(timeout=30)
    raise RuntimeError(f"{' '.join(command)} never started round 1")


def import_breakdown() -> list[tuple[str, float]]:
    """Seconds of import time by top-level package for what ``fedmodel simulate`` imports.

    ``python -X importtime`` gives each module's own time; summing them per top-level
    package says where start-up goes (the package that *triggers* an import is shown by
    ``-X importtime`` itself, e.g. Opacus pulling in scipy.stats and sympy).
    """
    modules = "simulations.cli, simulations.engines.inprocess"  # the command and its engine
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {modules}"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    seconds: dict[str, float] = {}
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        own, _, name = line[len("import time:") :].split("|")
        package = name.strip().split(".")[0]
        seconds[package] = seconds.get(package, 0.0) + int(own) / 1e6
    return sorted(seconds.items(), key=lambda item: -item[1])


def _bare_startup_probe(name: str, data_dir: str) -> None:
    workload = {w.name: w for w in workloads(1, data_dir=data_dir)}[name]
    bare_round_times(workload, on_first_round=lambda: print("FIRST ROUND", flush=True))


# -- the report -------------------------------------------------------------------------------


def measure(workload: Workload, *, repetitions: int, root: Path) -> dict[str, object]:
    """Steady-state cost per round of the harness and of the bare loop, alternating.

    CPU seconds per round: (CPU of an R-round job - CPU of a 1-round job) / (R - 1), which
    cancels every one-off cost (data, model, round-0 evaluation) and is barely touched by
    other processes' load (one torch thread, so CPU time is the work done). Wall seconds:
    the fastest of rounds 2..R. An untimed 1-round job on each side first pays what only
    the first job in a process pays (lazy imports, the cached dataset), which would
    otherwise land in the 1-round job alone and make the difference too small.

    The batched engine is measured the same way beside them (its ratio: what batching
    the clients leaves of the harness's cost; its weights agree to float rounding only,
    so they are not checked).
    """
    one_round = dataclasses.replace(workload, rounds=1)
    cpu: dict[str, list[float]] = {"harness": [], "bare": [], "batched": []}
    wall: dict[str, list[float]] = {"harness": [], "bare": [], "batched": []}
    accuracy: dict[str, float] = {}
    sides = (
        ("harness", lambda w: harness_round_times(w, root)),
        ("bare", bare_round_times),
        ("batched", lambda w: harness_round_times(w, root, engine="batched")),
    )
    for _, run in sides:
        run(one_round)
    for _ in range(repetitions):
        for side, run in sides:
            started = time.process_time()
            run(one_round)
            short = time.process_time() - started
            started = time.process_time()
            times, accuracy[side], weights = run(workload)
            long = time.process_time() - started
            cpu[side].append((long - short) / (workload.rounds - 1))
            wall[side] += times[1:]
            if side == "harness":
                h_weights = weights
            elif side == "bare":
                b_weights = weights
    difference = max(float((h_weights[k] - b_weights[k]).abs().max()) for k in b_weights)
    h, b, batched = min(cpu["harness"]), min(cpu["bare"]), min(cpu["batched"])
    return {
        "workload": workload.name,
        "harness CPU s/round": h,
        "bare CPU s/round": b,
        "ratio (CPU)": h / b,
        "ratio (wall)": min(wall["harness"]) / min(wall["bare"]),
        "goal": "<= 1.10",
        "batched engine / bare (CPU)": batched / b,
        "acc harness / bare / batched": (
            f"{accuracy['harness']:.4f} / {accuracy['bare']:.4f} / {accuracy['batched']:.4f}"
        ),
        "max |Δw|": difference,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--quick", action="store_true", help="3 rounds, 1 repetition")
    parser.add_argument("--rounds", type=int, default=5, help="MNIST rounds (digits: 3x)")
    parser.add_argument("--repetitions", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="workload names to run")
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up probes")
    parser.add_argument("--profile", metavar="WORKLOAD", help="cProfile the harness on one")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--data-dir", default=default_data_dir(), help=data_dir_help())
    parser.add_argument("--bare-startup", metavar="WORKLOAD", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # As train_locally: seeded noise is what a benchmark wants; hooks on the first layer.
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    if args.bare_startup:
        _bare_startup_probe(args.bare_startup, args.data_dir)
        return 0

    import torch

    from simulations.benchmarks.machine import header, table

    # One thread: on a small shared machine, torch's thread pool stalls whenever another
    # process holds a core, which swamps the differences measured here.
    torch.set_num_threads(args.threads)

    rounds, repetitions = (3, 1) if args.quick else (args.rounds, args.repetitions)
    digits_rounds = 3 * rounds
    if args.smoke:
        # Digits only (an MNIST round takes seconds); 2 rounds is the least that measures.
        rounds, digits_rounds, repetitions, args.no_startup = 2, 2, 1, True
    chosen = [
        w
        for w in workloads(rounds, data_dir=args.data_dir, digits_rounds=digits_rounds)
        if not args.only or w.name in args.only
    ]
    if args.smoke and not args.only:
        chosen = [w for w in chosen if w.name.startswith("digits")]
    if not chosen:
        print(f"no workload named {' '.join(args.only or [])} (MNIST needs {args.data_dir})")
        return 2
    if args.profile:
        return _profile({w.name: w for w in chosen}[args.profile])
    print(header("Harness overhead: in-process engine vs bare PyTorch loop"), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workload in chosen:
            row = measure(workload, repetitions=repetitions, root=Path(tmp))
            rows.append(row)
            print(f"  measured {workload.name}: CPU ratio {row['ratio (CPU)']:.3f}", flush=True)
    print(
        "\nSteady-state cost per round (CPU: (R-round job - 1-round job) / (R - 1), fastest; "
        f"{repetitions} repetition(s) of {rounds} rounds; digits: {digits_rounds} rounds; "
        f"grad-sample-mode {_grad_sample_mode()} on both sides)"
    )
    print(table(list(rows[0]), [list(r.values()) for r in rows]))
    diverged = [r["workload"] for r in rows if r["max |Δw|"] > SAME_WEIGHTS_TOLERANCE]
    if not args.no_startup:
        startup = []
        for workload in (w for w in chosen if w.config["dp"]):
            h, b = (
                min(startup_seconds(workload, bare=bare, data_dir=args.data_dir) for _ in range(3))
                for bare in (False, True)
            )
            startup.append([workload.name, h, b, h / b, "harness < 3 s"])
        print(
            "\nStart-up: fresh process to the start of round 1's training "
            "(fastest of 3; imports, data loading, round-0 evaluation included)"
        )
        print(table(["workload", "harness s", "bare s", "ratio", "goal"], startup))
        packages = import_breakdown()
        total = sum(s for _, s in packages)
        print(f"\nImport time of `fedmodel simulate`'s modules: {total:.2f} s, by package")
        print(
            table(
                ["package", "s", "share"],
                [[n, s, f"{100 * s / total:.0f}%"] for n, s in packages[:8]],
            )
        )
    if diverged:
        # Different weights mean the bare loop no longer does the harness's work, so the
        # ratios above compare different jobs.
        print(f"FAILED: harness and bare loop end with different weights on {diverged}")
        return 1
    return 0


def _grad_sample_mode() -> str:
    from fedmodel.config import RunConfig

    return RunConfig.from_mapping({}).grad_sample_mode


def _profile(workload: Workload) -> int:
    import cProfile
    import pstats

    with tempfile.TemporaryDirectory() as tmp:
        harness_round_times(workload, Path(tmp))  # warm: imports, data, caches
        profiler = cProfile.Profile()
        profiler.enable()
        harness_round_times(workload, Path(tmp))
        profiler.disable()
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(45)
    return 0


if __name__ == "__main__":
    sys.exit(main())
