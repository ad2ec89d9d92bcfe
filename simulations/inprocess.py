"""In-process engine: the unchanged ServerApp drives ClientApps in this very process.

Flower's own engines run each ClientApp behind a SuperLink (deployment) or in Ray
actors (simulation engine); both cost seconds of start-up. For single-machine studies
this Grid hands each Message straight to the ClientApp and returns its reply, so a
run starts as fast as Python imports. Each node keeps its own ``Context`` for the
whole run, exactly as Flower's runtimes do, so ClientApp state (the privacy ledger)
persists across rounds.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable, Mapping
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run

FIRST_NODE_ID = 1001


class InProcessGrid(Grid):
    """A :class:`flwr.serverapp.Grid` whose nodes are ClientApps called in this process.

    Parameters
    ----------
    client_app : ClientApp
        The app every node runs.
    run_config : Mapping
        The run config every node sees (``context.run_config``).
    node_configs : list of Mapping
        One node config per node (e.g. ``partition-id`` and ``num-partitions``).
    run_id : int
        The run's id.
    """

    def __init__(
        self,
        *,
        client_app: ClientApp,
        run_config: Mapping[str, object],
        node_configs: list[Mapping[str, object]],
        run_id: int = 1,
    ) -> None:
        if not node_configs:
            raise ValueError("an in-process federation needs at least one node")
        self.client_app = client_app
        self._run = Run.create_empty(run_id)
        self.contexts = {
            FIRST_NODE_ID + i: Context(
                run_id=run_id,
                node_id=FIRST_NODE_ID + i,
                node_config=dict(node_config),
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for i, node_config in enumerate(node_configs)
        }
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message to its node's ClientApp now; keep the reply for pulling."""
        ids = []
        for message in messages:
            message_id = str(uuid4())
            message.metadata.__dict__["_message_id"] = message_id
            message.metadata.__dict__["_run_id"] = self._run.run_id
            self._replies[message_id] = self._deliver(message)
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(mid) for mid in message_ids if mid in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def _deliver(self, message: Message) -> Message:
        node_id = message.metadata.dst_node_id
        if node_id not in self.contexts:
            reply = Message(
                Error(code=ErrorCode.UNKNOWN, reason=f"no node with id {node_id}"),
                reply_to=message,
            )
        else:
            try:
                reply = self.client_app(message, self.contexts[node_id])
            except Exception as error:  # noqa: BLE001 - a failing client is reported, not fatal
                # Same shape as Flower's simulation engine: the error travels in the reply.
                reason = f"{type(error).__name__}: {error}"
                traceback.print_exc()
                reply = Message(
                    Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason),
                    reply_to=message,
                )
        reply.metadata.__dict__["_message_id"] = str(uuid4())
        return reply
