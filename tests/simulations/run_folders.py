"""Run folders written by hand for tests of what reads them (plots, progress)."""

from __future__ import annotations

import math
from pathlib import Path

from fedmodel.config import RunConfig
from fedmodel.results import RoundMetrics, RunFolder


def metrics(round_: int, *, accuracy: float, epsilon: float) -> RoundMetrics:
    return RoundMetrics(
        round=round_,
        test_accuracy=accuracy,
        test_loss=1.0 / round_,
        epsilon_max=epsilon,
        epsilon_mean=epsilon / 2,
        clients_trained=4,
        clients_failed=0,
        train_loss=1.2 / round_,
        seconds=0.1,
    )


def make_run(path: Path, config: RunConfig, rounds: int) -> RunFolder:
    folder = RunFolder(path)
    folder.create(config)
    for r in range(1, rounds + 1):
        eps = 0.5 * r if config.dp else math.inf
        folder.add_round(metrics(r, accuracy=0.1 * r, epsilon=eps))
    return folder
