"""A strategy wrapper that keeps each round's outcome and every client's latest ledger, and
lets no update that is not the global model's, or not finite, reach the aggregate."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmodel.compression import decompress
from fedmodel.records import (
    COMPRESSED_ARRAYS_KEY,
    COMPRESSION_KEY,
    record_to_ledger,
    record_to_state_dict,
    records_to_compressed,
    serialized_size,
)
from server.strategies.delegating import DelegatingStrategy
from server.strategies.update_validation import UpdateValidator, all_finite


class ClientTracking(DelegatingStrategy):
    """Wrap a strategy; record who trained, who failed, and each client's privacy ledger.

    Composition, like Flower's own DP wrappers: aggregation is the wrapped strategy's.
    This wrapper only reads the ``"privacy"`` ConfigRecord of each training reply, keeps
    the latest ledger per client (ε is cumulative client-side, so the latest is the
    total), and drops from aggregation any reply whose ledger is missing or malformed
    when ``require_ledger`` is set: an update without an accounted guarantee is not
    averaged in.

    It also reports every sampled node that failed: an error reply (the ClientApp's
    exception text, or the SuperLink's "node unavailable") or no reply at all before
    the round's timeout (a crashed node). A round that keeps fewer than
    ``min_train_replies`` updates leaves the global model unchanged.

    Every training reply that passed the ledger checks is then validated against the
    global model it was sent (:mod:`server.strategies.update_validation`: the global
    model's array names, shapes and dtypes, finite values, a finite positive weight,
    and with ``max_update_norm`` > 0 a bounded update norm, rejected or clipped as
    ``update_norm_policy`` says). A rejected reply is logged with its node and reason,
    listed in :attr:`last_round_rejections` and not aggregated; its ledger still counts
    (the client did spend that privacy). An aggregate that is not finite is not adopted:
    the global model is kept, and so is the wrapped strategy's own state (FedAvgM's
    momentum, FedAdam's moments), restored to what it was before the round. Why a
    round kept the global model is :attr:`unchanged_reason`.

    A reply with a compressed update (run-config ``update-compression``,
    :mod:`fedmodel.compression`) is turned back into weights after the ledger checks
    and before validation: the global arrays it was sent plus the decompressed update,
    so that validation and aggregation see weights as from any other reply; a malformed
    one is rejected like an invalid update. :attr:`last_round_bytes` is what the
    round's training replies measured serialised (Flower's protobuf records),
    :attr:`last_round_uncompressed_bytes` what they measure with the weights in place
    of the compressed update (a reply dropped before that counts as sent).

    Parameters
    ----------
    strategy : Strategy
        The strategy that samples clients and aggregates (e.g. ``FedAvg``).
    require_ledger : bool
        Whether each training reply must carry a valid ledger (DP on).
    min_train_replies : int
        Fewest accepted updates a round needs to change the global model; 0 hands even
        an empty round to ``strategy`` (user-level DP: the round releases its noise, so
        that every round is the accounted Gaussian mechanism).
    round_timeout : float, optional
        The round's timeout in seconds (only named in failure reports).
    max_update_norm : float
        Bound on the L2 norm of an update (reply minus global, all arrays); 0: none.
    update_norm_policy : str
        ``"reject"`` or ``"clip"`` an update above ``max_update_norm``.
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        require_ledger: bool,
        min_train_replies: int = 1,
        round_timeout: float | None = None,
        max_update_norm: float = 0.0,
        update_norm_policy: str = "reject",
    ) -> None:
        if min_train_replies < 0:
            raise ValueError(f"min_train_replies must be >= 0, got {min_train_replies}")
        self.strategy = strategy
        self.require_ledger = require_ledger
        self.min_train_replies = min_train_replies
        self.round_timeout = round_timeout
        self.validator = UpdateValidator(
            max_update_norm=max_update_norm,
            policy=update_norm_policy,
            weighted_by_key=getattr(strategy, "weighted_by_key", "num-examples"),
        )
        self.last_round_rejections: list[str] = []  # "node <id>: <reason>", this round
        self._kept_because = ""  # why the strategy's aggregate was not adopted
        self.last_round_epsilons: dict[str, float] = {}
        self.last_round_updated = False
        self._sent: list[Message] = []
        self._global: dict[str, Any] = {}  # the global arrays of the round, as tensors
        self.last_round_bytes = 0
        self.last_round_uncompressed_bytes = 0
        self.ledgers: dict[str, dict[str, Any]] = {}
        self._steps_seen: dict[str, int] = {}
        self.last_round_failures: list[str] = []
        self.last_round_trained = 0
        self.last_train_metrics: MetricRecord | None = None
        self.last_evaluate_metrics: MetricRecord | None = None

    # -- what the wrapper adds ------------------------------------------------------

    def epsilons(self) -> list[float]:
        """Latest cumulative ε of every client that has trained so far."""
        return [float(ledger["epsilon"]) for ledger in self.ledgers.values()]

    def epsilon_line(self) -> str:
        """This round's cumulative ε of each client that trained, for the log."""
        return "ε by client: " + ", ".join(
            f"{client} (node {self.ledgers[client]['node_id']}) {epsilon:.3f}"
            for client, epsilon in sorted(self.last_round_epsilons.items())
        )

    def noise_source_line(self) -> str:
        """Where the clients that reported so far drew their DP noise and batches."""
        counts: dict[str, int] = {}
        for ledger in self.ledgers.values():
            counts[ledger["noise_source"]] = counts.get(ledger["noise_source"], 0) + 1
        sources = ", ".join(f"{source} x{n}" for source, n in sorted(counts.items()))
        return f"noise and sampling drawn per node from: {sources or 'no client yet'}"

    @property
    def unchanged_reason(self) -> str:
        """Why this round kept the global model (empty when it was updated)."""
        if self.last_round_updated:
            return ""
        if self.last_round_trained < self.min_train_replies:
            return (
                f"{self.last_round_trained} of at least {self.min_train_replies} updates "
                "(run-config min-train-replies)"
            )
        return self._kept_because

    def _accept(self, reply: Message, node_id: int) -> bool:
        source = f"node {node_id}"
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
        steps_total = sum(n for _, _, n in ledger["history"])
        metrics = reply.content.get("metrics")
        reported = int(metrics.get("steps", 0)) if metrics is not None else 0  # type: ignore[arg-type]
        floor = self._steps_seen.get(client, 0) + reported
        if steps_total < floor:
            # A ledger that did not grow by this round's steps lost or hid some of them.
            self._reject(
                source,
                f"ledger of {client} holds {steps_total} steps; at least {floor} expected "
                f"(earlier {self._steps_seen.get(client, 0)} + this round's {reported})",
            )
            return False
        self._steps_seen[client] = steps_total
        ledger.update(
            client=client,
            node_id=node_id,
            epsilon=epsilon,
            noise_multiplier=float(record.get("noise-multiplier", float("nan"))),  # type: ignore[arg-type]
            steps_total=steps_total,
            noise_source=str(record.get("noise-source", "unknown")),
        )
        self.ledgers[client] = ledger
        self.last_round_epsilons[client] = epsilon
        return True

    def _reject(self, source: str, reason: str) -> None:
        log(WARNING, "Dropping training reply from %s: %s", source, reason)
        self.last_round_failures.append(f"{source}: {reason}")

    def _reconstructed(self, reply: Message, node_id: int, sent: int) -> Message | None:
        """The reply with weights in place of its compressed update (None: malformed).

        ``sent`` is the reply's serialised size; the size it has with full weights is
        added to :attr:`last_round_uncompressed_bytes`.
        """
        if COMPRESSION_KEY not in reply.content and COMPRESSED_ARRAYS_KEY not in reply.content:
            self.last_round_uncompressed_bytes += sent
            return reply
        source = f"node {node_id}"
        try:
            update = decompress(records_to_compressed(reply.content, source=source))
        except (ValueError, TypeError, RuntimeError) as error:  # the client's, however odd
            self.last_round_uncompressed_bytes += sent
            log(WARNING, "Dropping training reply from %s: %s", source, error)
            self.last_round_rejections.append(f"{source}: {error}")
            return None
        weights = {}
        for name, delta in update.items():
            base = self._global.get(name)
            fits = base is not None and base.shape == delta.shape and base.dtype == delta.dtype
            weights[name] = base + delta if fits else delta  # a misfit: validation names it
        content = RecordDict(
            {
                key: record
                for key, record in reply.content.items()
                if key not in (COMPRESSION_KEY, COMPRESSED_ARRAYS_KEY)
            }
        )
        content["arrays"] = ArrayRecord(weights)
        self.last_round_uncompressed_bytes += serialized_size(content)
        return Message(metadata=reply.metadata, content=content)

    def _validated(self, reply: Message, node_id: int) -> Message | None:
        """The reply to aggregate (clipped if so asked), or None when its update is unfit."""
        verdict = self.validator.check(reply.content)
        if not verdict.accepted:
            log(WARNING, "Dropping training reply from node %s: %s", node_id, verdict.reason)
            self.last_round_rejections.append(f"node {node_id}: {verdict.reason}")
            return None
        if verdict.clipped:
            log(
                INFO,
                "Clipping the update of node %s: norm %.4g to max-update-norm %g",
                node_id,
                verdict.norm,
                self.validator.max_update_norm,
            )
        if verdict.content is reply.content:
            return reply
        return Message(metadata=reply.metadata, content=verdict.content)

    # -- Strategy interface, delegated ----------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        # Kept: the Grid stamps each with its message id, which replies refer to.
        self._sent = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self.validator.use_reference(arrays)  # what every reply's model must match
        self._global = record_to_state_dict(arrays)  # what compressed updates add to
        return self._sent

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.last_round_failures = []
        self.last_round_rejections = []
        self.last_round_epsilons = {}
        self.last_round_bytes = self.last_round_uncompressed_bytes = 0
        destination = {sent.metadata.message_id: sent.metadata.dst_node_id for sent in self._sent}
        answered: set[int] = set()
        accepted = []
        for reply in replies:
            node_id = reply.metadata.src_node_id
            if node_id == SUPERLINK_NODE_ID:  # the SuperLink answered for the node
                node_id = destination.get(reply.metadata.reply_to_message_id, node_id)
            answered.add(node_id)
            sent = 0 if reply.has_error() else serialized_size(reply.content)
            self.last_round_bytes += sent
            if not self._accept(reply, node_id):
                self.last_round_uncompressed_bytes += sent
                continue
            rebuilt = self._reconstructed(reply, node_id, sent)
            checked = None if rebuilt is None else self._validated(rebuilt, node_id)
            if checked is not None:
                accepted.append(checked)
        waited = f" within {self.round_timeout:g} s" if self.round_timeout else ""
        for sent in self._sent:
            if sent.metadata.dst_node_id not in answered:
                self.last_round_failures.append(
                    f"node {sent.metadata.dst_node_id}: no reply{waited} (crashed or too slow)"
                )
        self.last_round_trained = len(accepted)
        self.last_train_metrics = None
        if len(accepted) < self.min_train_replies:
            log(
                WARNING,
                "Round %s: %s of at least %s updates arrived; the global model is unchanged",
                server_round,
                len(accepted),
                self.min_train_replies,
            )
            return self._unchanged("")  # unchanged_reason says how many arrived
        state = copy.deepcopy(vars(self.strategy))  # restored if the aggregate is unfit
        arrays, metrics = self.strategy.aggregate_train(server_round, accepted)
        if arrays is None:
            return self._unchanged(f"{type(self.strategy).__name__} aggregated nothing")
        if not all_finite(arrays):
            log(
                WARNING,
                "Round %s: the aggregate is not finite; the global model is kept",
                server_round,
            )
            vars(self.strategy).clear()
            vars(self.strategy).update(state)
            return self._unchanged("the aggregate is not finite")
        self.last_round_updated, self._kept_because = True, ""
        self.last_train_metrics = metrics
        return arrays, metrics

    def _unchanged(self, reason: str) -> tuple[None, None]:
        self.last_round_updated, self._kept_because = False, reason
        return None, None

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        self.last_evaluate_metrics = self.strategy.aggregate_evaluate(server_round, replies)
        return self.last_evaluate_metrics
