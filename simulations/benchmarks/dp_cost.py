"""Benchmark: what DP-SGD costs over plain SGD, per Opacus ``grad_sample_mode``.

One local epoch of ``fedmodel.training.train_locally`` over 6,000 MNIST training images
(batch 60, so 100 steps), for the MLP and the CNN: DP-SGD in each of Opacus's modes
(``hooks``: per-layer backward hooks; ``ew``: expanded weights; ``functorch``:
``vmap(grad)``; ``ghost``: ghost clipping, Li et al. 2022 / Bu et al. 2023) against the
same epoch without DP. Each repetition times the non-DP epoch and every mode in turn
(round robin), so all see the same machine load; the ratio is of the fastest epochs
(load only ever adds time), the ratio of medians is shown beside it.

"correct" checks each mode against ``hooks``: one step on 60 examples (sampling rate 1),
noise 0, must give the same weights to float rounding; a mode that fails or is not
correct makes the run exit 1 (after the table).

Run (needs mnist.npz in ``--data-dir``/``$FEDMODEL_DATA_DIR``, default ../shared/data)::

    .venv/bin/python -m simulations.benchmarks.dp_cost [--repetitions 3] [--threads 1]
    .venv/bin/python -m simulations.benchmarks.dp_cost --smoke

``--smoke``: 120 examples (2 steps), 1 repetition, both models, every mode and its
correctness check; on the digits dataset (8x8 images, shipped with scikit-learn) when
mnist.npz is absent.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch
from torch.utils.data import Subset

from fedmodel.data import load_dataset
from fedmodel.models import build_model
from fedmodel.privacy import PrivacyLedger
from fedmodel.training import TrainingSettings, train_locally
from fedmodel.training.local_training import GRAD_SAMPLE_MODES
from simulations.benchmarks.machine import (
    SMOKE_HELP,
    data_dir_help,
    default_data_dir,
    has_mnist,
    header,
    table,
)

EXAMPLES = 6000
SMOKE_EXAMPLES = 120
BATCH = 60


def epoch_seconds(model_name: str, data, *, dp: bool, mode: str = "hooks", noise: float = 1.0):
    """Seconds of one local epoch, and the weights it produced."""
    torch.manual_seed(0)
    input_shape = tuple(data[0][0].shape)  # MNIST 1x28x28, digits 1x8x8
    model = build_model(model_name, input_shape=input_shape, num_classes=10, hidden_sizes=(64,))
    settings = TrainingSettings(
        epochs=1,
        batch_size=BATCH,
        learning_rate=0.5,
        dp=dp,
        noise_multiplier=noise,
        max_grad_norm=1.0,
        grad_sample_mode=mode,
    )
    ledger = PrivacyLedger(accountant="rdp", delta=1e-5) if dp else None
    started = time.perf_counter()
    result = train_locally(model, data, settings=settings, ledger=ledger, seed=1)
    return time.perf_counter() - started, result.state_dict


def one_step_check(model_name: str, data, mode: str) -> str:
    """One DP-SGD step on 60 examples (sampling rate 1: all of them), noise 0, against hooks.

    The clipped, averaged gradient is the same whatever computes the per-example
    gradients, so the weights after one step must agree to float rounding (a whole epoch
    would compound rounding differences through 100 steps).
    """
    batch = Subset(data, range(BATCH))
    _, reference = epoch_seconds(model_name, batch, dp=True, mode="hooks", noise=0.0)
    _, weights = epoch_seconds(model_name, batch, dp=True, mode=mode, noise=0.0)
    gap = max(float((weights[k] - reference[k]).abs().max()) for k in reference)
    return f"yes ({gap:.0e})" if gap < 1e-5 else f"NO (max |Δw| {gap:.1e})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--examples", type=int, default=EXAMPLES, help="training images")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--models", nargs="*", default=["mlp", "cnn"])
    parser.add_argument("--data-dir", default=default_data_dir(), help=data_dir_help())
    args = parser.parse_args(argv)
    if args.smoke:
        args.repetitions, args.examples = 1, SMOKE_EXAMPLES
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    dataset = "mnist"
    if not has_mnist(args.data_dir):
        if not args.smoke:
            print(f"needs {args.data_dir}/mnist.npz ({data_dir_help()})")
            return 1
        # The smoke run checks the code, not the figures: digits are always there.
        dataset = "digits"
        print(f"no {args.data_dir}/mnist.npz: smoke run on digits instead")
    data = Subset(load_dataset(dataset, data_dir=args.data_dir).train, range(args.examples))
    print(header("DP-SGD cost per Opacus grad_sample_mode"), flush=True)
    rows, broken = [], []
    for model_name in args.models:
        epoch_seconds(model_name, data, dp=False)  # warm-up: lazy imports, allocator
        modes, correct = [], {}
        for mode in GRAD_SAMPLE_MODES:
            try:
                correct[mode] = one_step_check(model_name, data, mode)
                epoch_seconds(model_name, data, dp=True, mode=mode)  # warm-up
                modes.append(mode)
            except Exception as error:  # noqa: BLE001 - a mode that fails is reported
                rows.append([model_name, mode, "-", "-", "-", "-", f"fails: {error!r}"[:60]])
                broken.append(f"{model_name}/{mode}: {error!r}")
                continue
            if not correct[mode].startswith("yes"):
                broken.append(f"{model_name}/{mode}: {correct[mode]}")
        # Round robin: every repetition times the non-DP epoch and each mode in turn, so
        # all of them see the same machine load.
        times: dict[str, list[float]] = {name: [] for name in ["none", *modes]}
        for _ in range(args.repetitions):
            times["none"].append(epoch_seconds(model_name, data, dp=False)[0])
            for mode in modes:
                times[mode].append(epoch_seconds(model_name, data, dp=True, mode=mode)[0])
        plain = min(times["none"])
        for mode in modes:
            ratio_median = statistics.median(times[mode]) / statistics.median(times["none"])
            fastest = min(times[mode])
            rows.append(
                [model_name, mode, plain, fastest, fastest / plain, ratio_median, correct[mode]]
            )
            print(f"  {model_name}/{mode}: {fastest / plain:.2f}x", flush=True)
    print(
        f"\nOne local epoch, {args.examples} {dataset} images, batch {BATCH} "
        f"(fastest of {args.repetitions}, round robin; goal DP/non-DP <= 1.5x)"
    )
    print(
        table(
            [
                "model",
                "grad_sample_mode",
                "non-DP s",
                "DP-SGD s",
                "ratio",
                "ratio of medians",
                "correct",
            ],
            rows,
        )
    )
    if broken:
        print("FAILED: " + "; ".join(broken))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
