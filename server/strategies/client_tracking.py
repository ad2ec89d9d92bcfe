"""A strategy wrapper that keeps each round's outcome and every client's latest ledger."""

from __future__ import annotations

from collections.abc import Iterable
from logging import WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmodel.records import record_to_ledger


class ClientTracking(Strategy):
    """Wrap a strategy; record who trained, who failed, and each client's privacy ledger.

    Composition, like Flower's own DP wrappers: aggregation is the wrapped strategy's.
    This wrapper only reads the ``"privacy"`` ConfigRecord of each training reply, keeps
    the latest ledger per client (ε is cumulative client-side, so the latest is the
    total), and drops from aggregation any reply whose ledger is missing or malformed
    when ``require_ledger`` is set: an update without an accounted guarantee is not
    averaged in.

    Parameters
    ----------
    strategy : Strategy
        The strategy that samples clients and aggregates (e.g. ``FedAvg``).
    require_ledger : bool
        Whether each training reply must carry a valid ledger (DP on).
    """

    def __init__(self, strategy: Strategy, *, require_ledger: bool) -> None:
        self.strategy = strategy
        self.require_ledger = require_ledger
        self.ledgers: dict[str, dict[str, Any]] = {}
        self.last_round_failures: list[str] = []
        self.last_round_trained = 0
        self.last_train_metrics: MetricRecord | None = None

    # -- what the wrapper adds ------------------------------------------------------

    def epsilons(self) -> list[float]:
        """Latest cumulative ε of every client that has trained so far."""
        return [float(ledger["epsilon"]) for ledger in self.ledgers.values()]

    def _accept(self, reply: Message) -> bool:
        source = f"node {reply.metadata.src_node_id}"
        if reply.has_error():
            self.last_round_failures.append(f"{source}: {reply.error.reason}")
            return False
        if "privacy" not in reply.content:
            if self.require_ledger:
                self._reject(source, "reply carries no privacy ledger")
                return False
            return True
        record: ConfigRecord = reply.content["privacy"]
        try:
            ledger = record_to_ledger(record, source=source)
            client = str(record["client"])
            epsilon = float(record["epsilon"])  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as error:
            self._reject(source, f"malformed privacy ledger: {error}")
            return False
        ledger.update(
            client=client,
            node_id=reply.metadata.src_node_id,
            epsilon=epsilon,
            noise_multiplier=float(record.get("noise-multiplier", float("nan"))),  # type: ignore[arg-type]
            steps_total=sum(n for _, _, n in ledger["history"]),
        )
        self.ledgers[client] = ledger
        return True

    def _reject(self, source: str, reason: str) -> None:
        log(WARNING, "Dropping training reply from %s: %s", source, reason)
        self.last_round_failures.append(f"{source}: {reason}")

    # -- Strategy interface, delegated ----------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.last_round_failures = []
        accepted = [reply for reply in replies if self._accept(reply)]
        self.last_round_trained = len(accepted)
        arrays, metrics = self.strategy.aggregate_train(server_round, accepted)
        self.last_train_metrics = metrics
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()
