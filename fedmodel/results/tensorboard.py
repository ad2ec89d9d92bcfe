"""TensorBoard event files of a run: one step per round (run-config ``tensorboard = true``).

Written by the ServerApp's round recorder into ``<run-dir>/tensorboard/``, so simulations
and deployments get the same files; view them with ``tensorboard --logdir RUN_DIR``.
TensorBoard is an optional dependency, imported only when the writer is made:
``pip install ".[tensorboard]"``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from fedmodel.results.run_folder import RoundMetrics

# RoundMetrics field -> scalar tag (ε tags only under DP; nan values are skipped).
SCALAR_TAGS = {
    "test_accuracy": "test/accuracy",
    "test_loss": "test/loss",
    "epsilon_max": "privacy/epsilon_max",
    "epsilon_mean": "privacy/epsilon_mean",
    "clients_trained": "clients/trained",
    "clients_failed": "clients/failed",
    "clients_rejected": "clients/rejected",
    "seconds": "time/seconds_per_round",
    "train_loss": "train/loss",
    "client_accuracy": "clients/eval_accuracy",
    "client_loss": "clients/eval_loss",
}
EPSILON_HISTOGRAM_TAG = "privacy/client_epsilon"


class TensorBoardWriter:
    """Writes each round's metrics as scalars (step = round) and the clients' ε as a histogram.

    Parameters
    ----------
    path : path-like
        The folder of the event files (``<run-dir>/tensorboard``).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # optional extra
            raise ImportError(
                'run-config tensorboard = true needs TensorBoard: pip install ".[tensorboard]"'
            ) from error
        self.path = Path(path)
        self._writer: Any = SummaryWriter(log_dir=str(self.path))

    def add_round(self, metrics: RoundMetrics, *, client_epsilons: Sequence[float] = ()) -> None:
        """Add ``metrics`` at step ``metrics.round``, then flush (a run that dies keeps it)."""
        step = metrics.round
        names = {f.name for f in fields(RoundMetrics)}
        tags = dict(SCALAR_TAGS)
        if "bytes_sent" in names:  # written when RoundMetrics carries it
            tags["bytes_sent"] = "communication/bytes_sent"
        for name, tag in tags.items():
            value = float(getattr(metrics, name))
            if math.isfinite(value):
                self._writer.add_scalar(tag, value, global_step=step)
        finite = [e for e in client_epsilons if math.isfinite(e)]
        if finite:
            import numpy as np

            self._writer.add_histogram(EPSILON_HISTOGRAM_TAG, np.asarray(finite), global_step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


__all__ = ["EPSILON_HISTOGRAM_TAG", "SCALAR_TAGS", "TensorBoardWriter"]
