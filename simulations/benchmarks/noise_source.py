"""Benchmark: what drawing DP-SGD's randomness securely costs per step.

Per DP-SGD step a client draws Gaussian noise for every parameter tensor and, for the
next batch, a Poisson-sampling mask over its N records (each in with probability
q = 64 / N). Timed in one run, per model:

- seeded: Opacus's non-secure path, a seeded ``torch.Generator``:
  ``torch.normal(0, std, p.shape, generator=g)`` per parameter tensor and
  ``torch.rand(N, generator=g) < q`` for the mask;
- secure: ``fedmodel.privacy.secure_randomness.SecureRandomness`` (ChaCha20 from
  ``os.urandom``; each noise value the sum of 4 Gaussians over 2, as Opacus's
  ``secure_mode``) for the same draws;
- DP-SGD step: one whole Opacus step (``PrivacyEngine().make_private``, hooks mode,
  noise multiplier 1, clip 1) on a batch of 64 random examples: forward, per-example
  gradients, clipping, the (seeded) noise, the update.

A step already pays for seeded draws, so using secure ones adds (secure - seeded) to it;
the table gives that as a share of the step. Models: the digits MLP (N = 1437) and the
MNIST CNN (N = 6000), both from ``fedmodel.models.build_model``. Repetitions run round
robin (seeded, secure, step in turn, so all three see the same machine load); each
figure is the median wall-clock time over the repetitions, with one torch thread.

Run::

    .venv/bin/python -m simulations.benchmarks.noise_source            # full
    .venv/bin/python -m simulations.benchmarks.noise_source --smoke    # CI: seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmodel.models import build_model
from fedmodel.privacy.secure_randomness import SecureRandomness
from simulations.benchmarks.machine import header, table

BATCH = 64
NOISE_MULTIPLIER = 1.0
MAX_GRAD_NORM = 1.0
STD = NOISE_MULTIPLIER * MAX_GRAD_NORM  # Opacus's noise std before averaging


@dataclass(frozen=True)
class Workload:
    model: str
    input_shape: tuple[int, ...]
    records: int  # N: the client's training records, for the Poisson mask


WORKLOADS = {
    "mlp": Workload("mlp", (64,), 1437),  # digits: 1437 training images of 8x8
    "cnn": Workload("cnn", (1, 28, 28), 6000),  # MNIST: 6000 training images
}


def build(workload: Workload) -> nn.Module:
    torch.manual_seed(0)
    return build_model(
        workload.model, input_shape=workload.input_shape, num_classes=10, hidden_sizes=(64,)
    )


def seeded_draws(params: list[torch.Tensor], records: int, q: float, g: torch.Generator):
    """One step's randomness as Opacus draws it without ``secure_mode``."""
    noise = [torch.normal(0.0, STD, p.shape, generator=g, dtype=p.dtype) for p in params]
    return noise, torch.rand(records, generator=g) < q


def secure_draws(params: list[torch.Tensor], records: int, q: float, rng: SecureRandomness):
    """The same draws from the ChaCha20 keystream."""
    noise = [rng.gaussian(p.shape, std=STD, dtype=p.dtype) for p in params]
    return noise, rng.bernoulli(records, q)


def dp_sgd_step(workload: Workload) -> Callable[[], None]:
    """A closure doing one whole Opacus DP-SGD step on a fixed batch of random data."""
    model = build(workload)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = TensorDataset(
        torch.randn(workload.records, *workload.input_shape),
        torch.randint(0, 10, (workload.records,)),
    )
    model, optimizer, _ = PrivacyEngine().make_private(
        module=model,
        optimizer=optimizer,
        data_loader=DataLoader(data, batch_size=BATCH),
        noise_multiplier=NOISE_MULTIPLIER,
        max_grad_norm=MAX_GRAD_NORM,
    )
    inputs, labels = data.tensors[0][:BATCH], data.tensors[1][:BATCH]
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(inputs), labels).backward()
        optimizer.step()

    return step


def check(params: list[torch.Tensor], draws, records: int) -> None:
    """The secure draws have the shapes and types a DP-SGD step needs (fails the run)."""
    noise, mask = draws
    for p, n in zip(params, noise, strict=True):
        if n.shape != p.shape or n.dtype != p.dtype or not bool(torch.isfinite(n).all()):
            raise AssertionError(f"bad noise for a {tuple(p.shape)} {p.dtype} parameter")
    if mask.dtype != torch.bool or mask.shape != (records,):
        raise AssertionError(f"bad Poisson mask: {mask.dtype} {tuple(mask.shape)}")
    if not 0 < int(mask.sum()) < records:  # expected 64; P(0 or N) is below 1e-27
        raise AssertionError(f"implausible Poisson batch of {int(mask.sum())} of {records}")


def milliseconds(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1e3


def measure(workload: Workload, repetitions: int) -> list[object]:
    model = build(workload)
    params = [p.detach() for p in model.parameters()]
    q = BATCH / workload.records
    generator = torch.Generator().manual_seed(0)
    rng = SecureRandomness()
    step = dp_sgd_step(workload)

    def seeded() -> object:
        return seeded_draws(params, workload.records, q, generator)

    def secure() -> object:
        return secure_draws(params, workload.records, q, rng)

    check(params, secure(), workload.records)
    for fn in (seeded, secure, step):  # warm-up: lazy init, allocator, Opacus hooks
        fn()
    times: dict[str, list[float]] = {"seeded": [], "secure": [], "step": []}
    for _ in range(repetitions):  # round robin: all three see the same load
        times["seeded"].append(milliseconds(seeded))
        times["secure"].append(milliseconds(secure))
        times["step"].append(milliseconds(step))
    seeded_ms, secure_ms, step_ms = (statistics.median(times[k]) for k in times)
    added = secure_ms - seeded_ms
    print(
        f"  {workload.model}: secure adds {added:.2f} ms = {100 * added / step_ms:.1f}% "
        f"of a DP-SGD step ({step_ms:.1f} ms)",
        flush=True,
    )
    return [
        workload.model,
        sum(p.numel() for p in params),
        len(params),
        workload.records,
        seeded_ms,
        secure_ms,
        step_ms,
        added,
        f"{100 * added / step_ms:.1f}%",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke", action="store_true", help="a few seconds: MLP only, 3 repetitions (CI)"
    )
    parser.add_argument("--repetitions", type=int, default=None, help="default 50 (smoke: 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--models", nargs="*", choices=sorted(WORKLOADS), default=None)
    args = parser.parse_args(argv)
    repetitions = args.repetitions or (3 if args.smoke else 50)
    models = args.models or (["mlp"] if args.smoke else ["mlp", "cnn"])
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    print(header("Secure vs seeded DP-SGD randomness, per step"), flush=True)
    rows = [measure(WORKLOADS[name], repetitions) for name in models]
    print(
        f"\nms per DP-SGD step, median of {repetitions} (round robin); noise for every "
        f"parameter tensor + Poisson mask over N records (q = {BATCH}/N); step = whole "
        f"Opacus step, batch {BATCH}, hooks"
    )
    print(
        table(
            [
                "model",
                "params",
                "tensors",
                "N",
                "seeded ms",
                "secure ms",
                "DP-SGD step ms",
                "secure adds ms",
                "of a step",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
