"""Before round 1 with custom data: ask every node what it holds, agree on the model.

The server sends a Flower ``query`` message to every connected node; each ClientApp
loads and validates its own data and replies with a description (input shape, class
count, number of examples, class names) or with the error its data raised. Nodes whose
data is bad are reported by node id and left out of the run; the others must agree on
one input shape and class set (a mismatch fails the run, naming the client).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from fedmodel.config import RunConfig
from fedmodel.data.sources import (
    DataError,
    FederationData,
    SourceData,
    agree,
    check_test_set,
    load_test_set,
)
from fedmodel.records import record_to_description
from server.delegating_grid import DelegatingGrid


@dataclass(frozen=True)
class CheckedData:
    """The outcome of the check: the model input, who takes part, the test set."""

    federation: FederationData
    ready: dict[int, str]  # node id -> where its data came from
    excluded: dict[int, str]  # node id -> why it is left out
    test: SourceData | None
    num_examples: dict[int, int] = field(default_factory=dict)
    held_out: dict[int, bool] = field(default_factory=dict)  # node id -> has a test split

    def report(self) -> list[str]:
        """Lines for the run's log."""
        total = sum(self.num_examples.values())
        lines = [
            f"Data check: {len(self.ready)} of {len(self.ready) + len(self.excluded)} nodes "
            f"ready, input shape {self.federation.input_shape}, "
            f"{self.federation.num_classes} classes, {total} training examples"
        ]
        lines += [f"  excluded node {node}: {reason}" for node, reason in self.excluded.items()]
        if self.test is None:
            lines.append(
                "Central evaluation off: no run-config test-data; the clients evaluate the "
                "global model on their own data each round (under DP: on held-out splits "
                "only)"
            )
        else:
            test = self.test
            lines.append(f"Central evaluation on {test.origin} ({len(test.train)} examples)")
        return lines


def check_client_data(grid: Grid, config: RunConfig) -> CheckedData:
    """Query every node's data and agree on the model input.

    Waits up to run-config ``round-timeout`` for the replies. Raises
    :class:`DataError` when fewer than ``min-train-replies`` nodes have usable data
    (each failure named by node), when usable clients disagree on the input shape or
    class set, or when the test set does not fit them. Nothing is trained before.
    """
    min_nodes = config.min_train_replies
    _, node_ids = sample_nodes(grid, min_available_nodes=min_nodes, sample_size=0)
    messages = [
        Message(
            content=RecordDict({"config": ConfigRecord()}),
            message_type=MessageType.QUERY,
            dst_node_id=node_id,
        )
        for node_id in node_ids
    ]
    replies = {
        reply.metadata.src_node_id: reply
        for reply in grid.send_and_receive(messages, timeout=config.round_timeout)
    }
    descriptions, excluded, held_out = {}, {}, {}
    for node_id in node_ids:
        reply = replies.get(node_id)
        if reply is None:
            excluded[node_id] = f"no reply within round-timeout {config.round_timeout:g} s"
        elif reply.has_error():
            excluded[node_id] = _readable(reply.error.reason)
        else:
            try:
                descriptions[node_id] = record_to_description(
                    reply.content["data"], source=f"node {node_id}"
                )
                held_out[node_id] = bool(reply.content["data"].get("has-held-out-split", False))
            except (KeyError, ValueError) as error:
                excluded[node_id] = f"malformed reply: {error}"
    if len(descriptions) < min_nodes:
        failures = "; ".join(f"node {node}: {reason}" for node, reason in excluded.items())
        raise DataError(
            f"only {len(descriptions)} of {len(node_ids)} nodes have usable data (need "
            f"min-train-replies = {min_nodes}): {failures}"
        )
    federation = agree(
        {f"node {n} ({d.origin})": d for n, d in descriptions.items()},
        num_classes=config.num_classes,
    )
    test = load_test_set(config)
    if test is not None:
        check_test_set(test, federation)
    return CheckedData(
        federation=federation,
        ready={n: d.origin for n, d in descriptions.items()},
        excluded=excluded,
        test=test,
        num_examples={n: d.num_examples for n, d in descriptions.items()},
        held_out=held_out,
    )


def _readable(reason: str) -> str:
    """Flower's deployed runtime reports ``<class 'pkg.Error'>:<'text'>``; say ``Error: text``.

    The in-process engine already reports ``Error: text``; both read the same this way.
    """
    match = _FLOWER_REASON.fullmatch(reason)
    return f"{match.group(1)}: {match.group(2)}" if match else reason


_FLOWER_REASON = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>:<'(.*)'>", flags=re.S)


class ExcludingGrid(DelegatingGrid):
    """A Grid that hides some nodes from the strategy (those whose data failed the check).

    Flower's strategies sample from ``grid.get_node_ids()``; filtering there keeps
    excluded nodes out of every round without changing the strategy.
    """

    def __init__(self, grid: Grid, *, excluded: Iterable[int]) -> None:
        super().__init__(grid)
        self.excluded = frozenset(excluded)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.grid.get_node_ids() if n not in self.excluded]
