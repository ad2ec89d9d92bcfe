"""What the ServerApp records after every round: evaluation, metrics, run folder, log lines."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from flwr.app import ArrayRecord, MetricRecord
from torch import nn
from torch.utils.data import Dataset

from fedmodel.config import RunConfig
from fedmodel.records import record_to_state_dict
from fedmodel.results import RoundMetrics, RunFolder
from fedmodel.results.privacy_report import privacy_report
from fedmodel.results.tensorboard import TensorBoardWriter
from fedmodel.training import evaluate
from fedmodel.training.device import resolve_device
from server.strategies.client_tracking import ClientTracking
from server.strategies.user_level_dp import user_level_layer

PER_CLIENT_LOG_LIMIT = 5


class RoundRecorder:
    """The strategy's ``evaluate_fn``: evaluate the global model, record and print the round.

    Flower calls it with the initial model (round 0: evaluated, not recorded) and with
    the global model after every round. Each round it evaluates on the central test set
    (``nan`` without one), builds the round's :class:`~fedmodel.results.RoundMetrics` from
    the strategy's record of the round, writes the run folder (metrics, model, the ledgers
    that changed) and prints the round's lines.

    Parameters
    ----------
    config : RunConfig
        The run's config.
    model : nn.Module
        A model of the run's architecture; the global weights are loaded into it.
    test : Dataset, optional
        The central test set; ``None`` when there is none.
    strategy : ClientTracking
        The strategy whose rounds are recorded.
    folder : RunFolder
        The run folder, already created.
    clock : callable
        Seconds, for the round's duration.
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        model: nn.Module,
        test: Dataset | None,
        strategy: ClientTracking,
        folder: RunFolder,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.config = config
        self.model = model
        self.test = test
        self.strategy = strategy
        self.folder = folder
        self.clock = clock
        self.user_level = user_level_layer(strategy)  # DP-FedAvg's layer, if any
        # The state a resumed run would need; everything else is given.
        self.round_started = clock()
        self.saved_ledgers: dict[str, dict[str, Any]] = {}  # client -> ledger last written
        self._decoded: tuple[ArrayRecord, dict[str, Any]] | None = None  # the last weights
        # run-config tensorboard: event files in <run-dir>/tensorboard (optional extra)
        self.tensorboard = (
            TensorBoardWriter(folder.path / "tensorboard") if config.tensorboard else None
        )

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs: the metrics of every round so far (a checkpoint's part)."""
        # Copies of the folder's rows: the checkpoint keeps them as they are now.
        return {"rounds": [dict(row) for row in self.folder.round_rows()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after the rounds in ``state``; load the strategy's state first.

        Every ledger the strategy holds was written when the checkpoint was taken.
        """
        self.folder.rounds = [RoundMetrics(**row) for row in state["rounds"]]
        self.saved_ledgers = dict(self.strategy.ledgers)
        self.round_started = self.clock()

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        loss, accuracy = self.evaluate(arrays)
        if server_round > 0:
            metrics = self.round_metrics(server_round, loss=loss, accuracy=accuracy)
            self.write(metrics, arrays)
            self.print_round(metrics)
        self.round_started = self.clock()
        return MetricRecord({"test-loss": loss, "test-accuracy": accuracy})

    def evaluate(self, arrays: ArrayRecord) -> tuple[float, float]:
        """Loss and accuracy of the weights ``arrays`` on the test set (nan without one)."""
        self.model.load_state_dict(self._state_dict(arrays))
        if self.test is None:
            return math.nan, math.nan
        # On the run config's device (README, "GPU"); the weights arrive as CPU tensors.
        return evaluate(self.model, self.test, device=resolve_device(self.config.device))

    def _state_dict(self, arrays: ArrayRecord) -> dict[str, Any]:
        """``arrays`` as a state dict, decoded once for evaluation and the run folder."""
        if self._decoded is None or self._decoded[0] is not arrays:
            self._decoded = (arrays, record_to_state_dict(arrays))
        return self._decoded[1]

    def round_metrics(self, server_round: int, *, loss: float, accuracy: float) -> RoundMetrics:
        """The round's metrics: the test results given, the rest from the strategy."""
        strategy, dp = self.strategy, self.config.dp
        epsilons = strategy.epsilons() or [0.0]
        return RoundMetrics(
            round=server_round,
            test_accuracy=accuracy,
            test_loss=loss,
            epsilon_max=max(epsilons) if dp else math.inf,
            epsilon_mean=sum(epsilons) / len(epsilons) if dp else math.inf,
            clients_trained=strategy.last_round_trained,
            clients_failed=len(strategy.last_round_failures),
            # Under DP clients send no training loss (a noise-free statistic of records).
            train_loss=_metric(strategy.last_train_metrics, "train-loss"),
            seconds=self.clock() - self.round_started,
            client_accuracy=_metric(strategy.last_evaluate_metrics, "eval-accuracy"),
            client_loss=_metric(strategy.last_evaluate_metrics, "eval-loss"),
            clients_rejected=len(strategy.last_round_rejections),
            bytes_sent=strategy.last_round_bytes,
            bytes_uncompressed=strategy.last_round_uncompressed_bytes,
            bytes_ratio=(
                strategy.last_round_bytes / strategy.last_round_uncompressed_bytes
                if strategy.last_round_uncompressed_bytes
                else math.nan
            ),
            user_epsilon=self.user_level.epsilon() if self.user_level else math.nan,
        )

    def write(self, metrics: RoundMetrics, arrays: ArrayRecord) -> None:
        """Add the round to the run folder, with the global model and the new ledgers."""
        with self.folder.batch():  # one folder fsync for the round's files, not one each
            self.folder.add_round(metrics)
            self.folder.save_model(self._state_dict(arrays))
            self.write_privacy_report()
            for client, ledger in self.strategy.ledgers.items():
                if self.saved_ledgers.get(client) is not ledger:  # new: keep rounds O(sampled)
                    self.folder.save_ledger(client, ledger)
                    self.saved_ledgers[client] = ledger
        if self.tensorboard is not None:
            epsilons = self.strategy.epsilons() if self.config.dp else []
            self.tensorboard.add_round(metrics, client_epsilons=epsilons)
            if metrics.round >= self.config.num_server_rounds:
                self.tensorboard.close()  # the last round: its writer thread ends with the run

    def write_privacy_report(self, *, stopped: str = "") -> None:
        """``privacy.json`` and ``privacy.md`` as of the rounds recorded so far."""
        report = privacy_report(
            self.config,
            ledgers=self.strategy.ledgers,
            user_level=self.user_level.report() if self.user_level else None,
            rounds_run=len(self.folder.rounds),
            stopped=stopped,
        )
        self.folder.save_privacy_report(report)

    def print_round(self, metrics: RoundMetrics) -> None:
        """The round's line, then where noise came from, per-client ε, failures."""
        config, strategy = self.config, self.strategy
        compressed = config.update_compression != "none"
        line = metrics.line(
            num_rounds=config.num_server_rounds, dp=config.dp, compressed=compressed
        )
        print(line, flush=True)
        if config.dp and metrics.round == 1:
            print(f"  {strategy.noise_source_line()}", flush=True)
        # Per-client ε on the log for small federations; always in privacy/<client>.json.
        if config.dp and 0 < len(strategy.last_round_epsilons) <= PER_CLIENT_LOG_LIMIT:
            print(f"  {strategy.epsilon_line()}", flush=True)
        for failure in strategy.last_round_failures:
            print(f"  failed: {failure}", flush=True)
        for rejection in strategy.last_round_rejections:
            print(f"  rejected: {rejection}", flush=True)
        if not strategy.last_round_updated:
            print(f"  global model unchanged: {strategy.unchanged_reason}", flush=True)


def _metric(metrics: MetricRecord | None, key: str) -> float:
    """An aggregated client metric of this round, or nan when no client evaluated."""
    return float(metrics[key]) if metrics and key in metrics else math.nan  # type: ignore[arg-type]
