"""A strategy wrapper that numbers rounds from ``offset + 1``: how a resumed run continues.

Flower's ``Strategy.start(num_rounds=n)`` always runs rounds ``1 .. n``. A run resumed
after round ``k`` of ``N`` calls ``start(num_rounds=N - k)`` on this wrapper, which hands
every call on to the wrapped strategy with ``server_round + k``: the clients' ``server-round``
(against which :meth:`~fedmodel.privacy.client_privacy.ClientPrivacy.plan_round` plans ε),
the message group ids, FedAdam's bias correction and the recorded metrics all carry the
true round numbers. Only Flower's own log lines (``[ROUND 1/N-k]``, shown with
``--verbose``) count from 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


class RoundOffset(Strategy):
    """Delegate to ``strategy`` with every ``server_round`` shifted by ``offset``.

    Parameters
    ----------
    strategy : Strategy
        The run's strategy (e.g. ``ClientTracking`` around Flower's ``FedAdam``).
    offset : int
        The rounds already done (>= 0).
    """

    def __init__(self, strategy: Strategy, *, offset: int) -> None:
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        self.strategy = strategy
        self.offset = offset

    def evaluate_fn(self, evaluate: EvaluateFn) -> EvaluateFn:
        """``evaluate`` called with true round numbers; Flower's round 0 (before the first
        round it runs) stays 0."""

        def shifted(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            return evaluate(server_round + self.offset if server_round else 0, arrays)

        return shifted

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_train(server_round + self.offset, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round + self.offset, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round + self.offset, replies)

    def summary(self) -> None:
        self.strategy.summary()
