"""Benchmark: a membership-inference audit of MNIST runs without DP and at ε 8, 3 and 1.

Workload: a seeded pool of ``2 n`` MNIST training images (``n = 500``; pixels / 255,
flattened), split at random into two halves: ``n`` members, given to 2 clients as custom
data (IID, 250 each), and ``n`` non-members, the server's test data. The same format as
:func:`simulations.benchmarks.machine.mnist_subset`, but one pool split at random, so that
each record's membership is a coin of the split (the one-run bound's setting; Steinke et
al. 2023 assume independent coins, a random half is the nearest equal-count draw). Small
data and many local epochs (10 rounds x 10 epochs, batch 32, lr 0.3, MLP with one hidden
layer of 256) make the model overfit, so that leakage without DP is visible. Runs: DP
off, then record-level DP-SGD calibrated to target-epsilon 8, 3 and 1 (δ = 1e-5, RDP).
Each final model is attacked by ``fedmodel audit`` (:func:`fedmodel.audit.audit_run`:
loss threshold, all ``n`` + ``n`` records).

Canaries (the input-space one-run audit of Steinke, Nasr & Jagielski 2023):
``c = 200`` more MNIST training images, each given a wrong label (drawn at random), each
put into the members' file by an independent fair coin, as that audit assumes. After
training, the loss of all ``c`` canaries gives a second AUC and one-run bound: mislabelled
records are what a model memorises, so this attack is stronger than the one on natural
records. The included canaries are members for ``fedmodel audit`` too.

Goals checked: the empirical ε lower bound never exceeds the claimed ε (a failure is a
bug: exit 1), and AUC at ε <= 1 is at most 0.55. Saves a PNG of AUC and empirical ε
against the claimed ε (``--plot``, default ``runs/benchmarks/audit.png``).

``--smoke``: a pool of 200, 1 round of 2 epochs, ε 1 only: fails if the bound exceeds
the claim. Without ``mnist.npz`` (``--data-dir``) it prints ``skipped``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simulations.benchmarks.machine import (
    SMOKE_HELP,
    data_dir_help,
    default_data_dir,
    has_mnist,
    header,
    skipped,
    table,
)

TRAINING = {
    "model": "mlp",
    "hidden-sizes": "256",
    "batch-size": 32,
    "learning-rate": 0.3,
    "delta": 1e-5,
    "accountant": "rdp",
    "seed": 0,
}
CLAIMS: tuple[float | None, ...] = (None, 8.0, 3.0, 1.0)  # None: DP off
SMOKE_CLAIMS: tuple[float | None, ...] = (1.0,)
AUC_AT_EPSILON_1 = 0.55
DEFAULT_PLOT = Path("runs") / "benchmarks" / "audit.png"


@dataclass(frozen=True)
class Outcome:
    """One run and its audit."""

    target: float | None
    claimed: float  # the run's max client ε (inf without DP)
    accuracy: float
    auc: float
    tpr_at_low_fpr: float
    rates_epsilon: float
    one_run_epsilon: float
    canary_auc: float
    canary_epsilon: float
    seconds: float

    @property
    def label(self) -> str:
        return "no DP" if self.target is None else f"ε {self.target:g}"

    @property
    def lower_bound(self) -> float:
        return max(self.rates_epsilon, self.one_run_epsilon, self.canary_epsilon)


@dataclass(frozen=True)
class Canaries:
    """Mislabelled records, each a member by a fair coin."""

    x: torch.Tensor
    y: torch.Tensor
    included: np.ndarray  # bool, one per canary


def pool_split(
    data_dir: str, folder: Path, *, size: int, canaries: int, seed: int
) -> tuple[dict[str, Any], Canaries]:
    """``2 size`` seeded MNIST training images split at random into members and non-members,
    and ``canaries`` mislabelled images, each added to the members by a fair coin.

    Written as custom-data ``.npz`` files (``x`` float32 in [0, 1], flattened; ``y``
    int64); returns the run-config keys that give members to the clients and
    non-members to the server, and the canaries.
    """
    with np.load(Path(data_dir) / "mnist.npz") as arrays:
        x, y = arrays["x_train"], arrays["y_train"]
        rng = np.random.default_rng(seed)
        drawn = rng.choice(len(y), size=2 * size + canaries, replace=False)  # shuffled
        pool, marked = drawn[: 2 * size], drawn[2 * size :]

        def pixels(index: np.ndarray) -> np.ndarray:
            return (x[index].reshape(len(index), -1) / np.float32(255.0)).astype(np.float32)

        wrong = ((y[marked] + rng.integers(1, 10, size=canaries)) % 10).astype(np.int64)
        included = rng.random(canaries) < 0.5  # independent fair coins
        members_x = np.concatenate([pixels(pool[:size]), pixels(marked[included])])
        members_y = np.concatenate([y[pool[:size]].astype(np.int64), wrong[included]])
        order = rng.permutation(len(members_y))  # canaries spread over both clients
        paths = {"members": folder / "members.npz", "non-members": folder / "non-members.npz"}
        np.savez(paths["members"], x=members_x[order], y=members_y[order])
        np.savez(paths["non-members"], x=pixels(pool[size:]), y=y[pool[size:]].astype(np.int64))
        marked_x = torch.from_numpy(pixels(marked))
    data = {
        "dataset": "custom",
        "data-path": str(paths["members"]),
        "test-data": str(paths["non-members"]),
        "num-classes": 10,
    }
    return data, Canaries(marked_x, torch.from_numpy(wrong), included)


def run(
    values: dict[str, Any], *, target: float | None, canaries: Canaries, run_dir: Path
) -> Outcome:
    """Train one run (its round lines kept out of the output) and audit its model."""
    from fedmodel.audit import audit_run, example_losses, loss_threshold_attack
    from fedmodel.audit.run_audit import load_run_model
    from simulations import simulate

    config = {**values, "run-dir": str(run_dir), "dp": target is not None}
    if target is not None:
        config["target-epsilon"] = target
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        result = simulate(config, num_clients=2)
    audit = audit_run(run_dir, max_records=10_000)
    claimed = audit.claimed.epsilon if audit.claimed.dp else math.inf
    model, config = load_run_model(run_dir)
    losses = example_losses(model, canaries.x, canaries.y)
    on_canaries = loss_threshold_attack(
        losses[canaries.included], losses[~canaries.included], delta=config.delta
    )
    return Outcome(
        target=target,
        claimed=claimed,
        accuracy=result.final.test_accuracy,
        auc=audit.attack.auc,
        tpr_at_low_fpr=audit.attack.tpr_at_low_fpr,
        rates_epsilon=audit.attack.rates.epsilon,
        one_run_epsilon=audit.attack.one_run.epsilon,
        canary_auc=on_canaries.auc,
        canary_epsilon=on_canaries.one_run.epsilon,
        seconds=time.perf_counter() - started,
    )


def goals(outcomes: Sequence[Outcome]) -> list[tuple[str, bool, str]]:
    """(goal, met, evidence): the bound stays under every claim; AUC at ε <= 1."""
    private = [o for o in outcomes if o.target is not None]
    within = all(o.lower_bound <= o.claimed for o in private)
    evidence = ", ".join(f"{o.label}: {o.lower_bound:.3f} <= {o.claimed:.3f}" for o in private)
    checks = [("empirical ε lower bound <= claimed ε", within, evidence)]
    small = [o for o in private if o.claimed <= 1.0 + 1e-9]
    if small:
        worst = max(o.auc for o in small)
        checks.append(
            (f"AUC at ε <= 1 at most {AUC_AT_EPSILON_1}", worst <= AUC_AT_EPSILON_1, f"{worst:.4f}")
        )
    return checks


def plot(outcomes: Sequence[Outcome], path: Path) -> Path:
    """AUC and the empirical ε bounds against the claimed ε (no DP drawn rightmost)."""
    from matplotlib.figure import Figure

    ordered = sorted(outcomes, key=lambda o: math.inf if o.target is None else o.claimed)
    positions = np.arange(len(ordered))
    labels = [
        "no DP\n(ε = ∞)" if o.target is None else f"{o.claimed:.2f}\n(target {o.target:g})"
        for o in ordered
    ]
    figure = Figure(figsize=(9.0, 3.6))
    left, right = figure.subplots(1, 2)
    left.plot(positions, [o.auc for o in ordered], "o-", label="AUC")
    left.axhline(0.5, color="grey", linestyle=":", label="chance")
    left.axhline(AUC_AT_EPSILON_1, color="tab:red", linestyle="--", linewidth=0.8,
                 label=f"goal at ε <= 1: {AUC_AT_EPSILON_1}")  # fmt: skip
    left.set_ylabel("AUC of the loss-threshold attack")
    right.plot(positions, [o.rates_epsilon for o in ordered], "o-", label="TPR/FPR (CP 95%)")
    right.plot(positions, [o.one_run_epsilon for o in ordered], "s-", label="one run (95%)")
    right.plot(
        positions, [o.canary_epsilon for o in ordered], "^-", label="one run, canaries (95%)"
    )
    left.plot(positions, [o.canary_auc for o in ordered], "^-", label="AUC on canaries")
    claimed = [o.claimed if math.isfinite(o.claimed) else np.nan for o in ordered]
    right.plot(positions, claimed, "k--", label="claimed ε")
    right.set_ylabel("ε (record-level, δ = 1e-5)")
    for axis, title in ((left, "attack success"), (right, "empirical ε lower bound")):
        axis.set_xticks(positions, labels, fontsize=8)
        axis.set_xlabel("claimed ε (max over clients, RDP)")
        axis.set_title(title, fontsize=10)
        axis.legend(fontsize=7)
    figure.suptitle("Membership-inference audit, MNIST (loss threshold)", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--data-dir", default=default_data_dir(), help=data_dir_help())
    parser.add_argument("--pool", type=int, default=None, help="members (= non-members); 500")
    parser.add_argument("--canaries", type=int, default=None, help="default 200 (smoke: 40)")
    parser.add_argument("--rounds", type=int, default=None, help="default 10 (smoke: 1)")
    parser.add_argument("--local-epochs", type=int, default=None, help="default 10 (smoke: 2)")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help="PNG to write")
    args = parser.parse_args(argv)
    if not has_mnist(args.data_dir):
        if args.smoke:
            return skipped(f"no mnist.npz in {args.data_dir}")
        parser.error(f"no mnist.npz in {args.data_dir}: {data_dir_help()}")
    size = args.pool or (100 if args.smoke else 500)
    count = args.canaries or (40 if args.smoke else 200)
    rounds = args.rounds or (1 if args.smoke else 10)
    epochs = args.local_epochs or (2 if args.smoke else 10)
    claims = SMOKE_CLAIMS if args.smoke else CLAIMS
    torch.set_num_threads(1)  # as the clients train (simulations/engines/clientapp.py)
    print(header("Membership-inference audit: empirical ε against the claimed ε"), flush=True)
    targets = ", ".join(f"{c:g}" for c in claims if c is not None)
    print(
        f"workload: MNIST pool of {2 * size} training images split at random: {size} members "
        f"(2 clients, IID), {size} non-members (server test data); MLP "
        f"{TRAINING['hidden-sizes']}, {rounds} rounds x {epochs} local epochs, B = "
        f"{TRAINING['batch-size']}, lr {TRAINING['learning-rate']}; DP-SGD at target ε "
        f"{targets} (record-level per client, δ = 1e-5, RDP)"
        f"{' and DP off' if None in claims else ''}; attack: loss threshold on every "
        f"member and non-member, and on {count} mislabelled canaries (each a member by a "
        "fair coin)",
        flush=True,
    )
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="fedmodel-audit-") as tmp:
        folder = Path(tmp)
        data, canaries = pool_split(args.data_dir, folder, size=size, canaries=count, seed=0)
        values = {**TRAINING, **data, "num-server-rounds": rounds, "local-epochs": epochs}
        for target in claims:
            name = "nodp" if target is None else f"eps{target:g}"
            outcome = run(values, target=target, canaries=canaries, run_dir=folder / name)
            outcomes.append(outcome)
            print(
                f"  {outcome.label:<6} claimed {outcome.claimed:.3f}  acc {outcome.accuracy:.4f}"
                f"  AUC {outcome.auc:.4f}  ε_lb {outcome.lower_bound:.3f}  "
                f"{outcome.seconds:.1f} s",
                flush=True,
            )
    columns = [
        "run", "claimed ε", "test acc", "AUC", "TPR@0.1%FPR", "ε_lb TPR/FPR", "ε_lb one-run",
        "canary AUC", "ε_lb canaries",
    ]  # fmt: skip
    rows = [
        [o.label, "∞" if math.isinf(o.claimed) else f"{o.claimed:.3f}", f"{o.accuracy:.4f}",
         f"{o.auc:.4f}", f"{o.tpr_at_low_fpr:.4f}", f"{o.rates_epsilon:.3f}",
         f"{o.one_run_epsilon:.3f}", f"{o.canary_auc:.4f}", f"{o.canary_epsilon:.3f}"]
        for o in outcomes
    ]  # fmt: skip
    print()
    print(table(columns, rows))
    checks = goals(outcomes)
    for goal, met, evidence in checks:
        print(f"{'met' if met else 'NOT MET'}: {goal}: {evidence}")
    if not args.smoke:
        print(f"plot: {plot(outcomes, args.plot)}")
    return 0 if checks[0][1] else 1  # a bound above its claim is a bug


if __name__ == "__main__":
    sys.exit(main())
