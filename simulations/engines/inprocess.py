"""In-process engine: the unchanged ServerApp drives ClientApps in this very process.

Flower's own engines run each ClientApp behind a SuperLink (deployment) or in Ray
actors (simulation engine); both cost seconds of start-up. For single-machine studies
this Grid hands each Message straight to the ClientApp and returns its reply, so a
run starts as fast as Python imports. Each node keeps its own ``Context`` for the
whole run, exactly as Flower's runtimes do, so ClientApp state (the privacy ledger)
persists across rounds.

Optionally a :class:`~simulations.engines.worker_pool.WorkerPool` trains the clients of a round
in parallel processes; the Contexts stay here and travel with each message.

Memory stays flat in the number of clients: a node's Context is made when it first
gets a message (so only clients that ever trained hold one, with their small ledger),
and data is loaded per client on demand by the ClientApp through bounded caches.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedmodel.config import ConfigError, RunConfig
from fedmodel.data.sources import release
from fedmodel.privacy.node_policy import NOISE_SOURCES
from fedmodel.records import decode_fast
from fedmodel.results import check_new_run_dir, default_run_dir, load_metrics
from fedmodel.results.checkpoint import check_resumable_run_dir
from simulations.client_data import check_delta, client_node_configs
from simulations.engines.byzantine import ByzantineNodes
from simulations.engines.clientapp import call_client_app, one_torch_thread
from simulations.engines.node_states import restore_contexts, save_contexts
from simulations.engines.result import SimulationResult
from simulations.engines.worker_pool import WorkerPool

CLIENT_APP = "client.client_app:app"  # as [tool.flwr.app.components] in pyproject.toml
FIRST_NODE_ID = 1001


def simulate_in_process(
    config: RunConfig | Mapping[str, Any] | None = None,
    *,
    num_clients: int | None = None,
    client_data: Sequence[Any] | None = None,
    verbose: bool = False,
    workers: int = 0,
    noise_source: str = "seeded",
    grid_type: type[InProcessGrid] | None = None,
) -> SimulationResult:
    """Run the ServerApp against the ClientApps in this process (or ``workers`` processes).

    The parameters are those of :func:`simulations.simulate`, which calls this for
    ``engine = "inprocess"``; ``grid_type`` is the Grid class (default
    :class:`InProcessGrid`; the batched engine passes its subclass). Everything is
    validated before any file is written.
    Run-config ``byzantine-fraction`` > 0 makes some nodes Byzantine
    (:mod:`simulations.engines.byzantine`).
    """
    if workers < 0:
        raise ConfigError(f"number of workers = {workers} is out of range: must be >= 0")
    from client.client_app import app as client_app
    from server.server_app import app as server_app

    if isinstance(config, RunConfig):
        run_config = config
    else:
        run_config = RunConfig.from_mapping(config or {})
    run_dir = Path(run_config.run_dir) if run_config.run_dir else default_run_dir(run_config)
    if run_config.resume:  # continue the run in run-dir from its checkpoint
        check_resumable_run_dir(run_dir)
    else:
        check_new_run_dir(run_dir)
    if noise_source not in NOISE_SOURCES:
        raise ConfigError(
            f"noise source {noise_source!r} is not known: must be one of {', '.join(NOISE_SOURCES)}"
        )
    node_configs, held = client_node_configs(
        run_config, num_clients=num_clients, client_data=client_data
    )
    node_configs = [{**node, "noise-source": noise_source} for node in node_configs]
    check_delta(run_config, num_clients=len(node_configs))
    run_config = run_config.replace(run_dir=str(run_dir))
    if workers and held:
        raise ConfigError("worker processes cannot see in-memory client data: pass paths")

    node_ids = [FIRST_NODE_ID + i for i in range(len(node_configs))]
    byzantine = ByzantineNodes.from_config(run_config, node_ids=node_ids)
    if byzantine is not None:
        names = {
            node: f"partition-{config['partition-id']}"
            for node, config in zip(node_ids, node_configs, strict=True)
            if "partition-id" in config
        }
        print(byzantine.describe(names), flush=True)
    pool = WorkerPool(client_app=CLIENT_APP, num_workers=workers) if workers else None
    grid = (grid_type or InProcessGrid)(
        client_app=client_app,
        run_config=run_config.to_mapping(),
        node_configs=node_configs,
        pool=pool,
        byzantine=byzantine,
    )
    # Flower's runtimes tell the ServerApp process who it is; messages are stamped with it.
    TaskIdentity.task_id, TaskIdentity.run_id = 1, grid.run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    server_context = Context(
        run_id=grid.run.run_id,
        node_id=SUPERLINK_NODE_ID,
        node_config={},
        state=RecordDict(),
        run_config=run_config.to_mapping(),
    )
    flower_logger = logging.getLogger("flwr")
    previous_level = flower_logger.level
    if not verbose:
        flower_logger.setLevel(logging.WARNING)
    try:
        with _young_objects_only():
            server_app(grid, server_context)
    finally:
        flower_logger.setLevel(previous_level)
        if pool is not None:
            pool.close()
        for name in held:
            release(name)
    return SimulationResult(run_dir=run_dir, rounds=load_metrics(run_dir))


@contextlib.contextmanager
def _young_objects_only() -> Iterator[None]:
    """Keep Python's cyclic garbage collector off what existed before the run.

    By the first round the process holds ~300,000 tracked objects (torch, Flower,
    Opacus, the data), and a full collection walked them all (one took 0.18 s). With
    ``gc.freeze()`` the batched engine's rounds at 100 clients took 0.155-0.160 s on
    average instead of 0.180-0.186 s (two alternating pairs of 12-round runs, each after
    an in-process run in the same process, as the benchmark does); at 10 clients no
    difference showed. Frozen objects are unfrozen when the run ends, so garbage among
    them is collected then as before.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class InProcessGrid(Grid):
    """A :class:`flwr.serverapp.Grid` whose nodes are ClientApps called in this process.

    Parameters
    ----------
    client_app : ClientApp
        The app every node runs (called here when there is no ``pool``).
    run_config : Mapping
        The run config every node sees (``context.run_config``).
    node_configs : list of Mapping
        One node config per node (e.g. ``partition-id`` and ``num-partitions``).
    run_id : int
        The run's id.
    pool : WorkerPool, optional
        Worker processes that run the ClientApp instead (the same app, by reference).
        Replies are returned in message order either way, so aggregation is identical.
    byzantine : ByzantineNodes, optional
        Nodes whose training messages and replies are corrupted on the way
        (simulation only, :mod:`simulations.engines.byzantine`).
    """

    def __init__(
        self,
        *,
        client_app: Any,
        run_config: Mapping[str, object],
        node_configs: list[Mapping[str, object]],
        run_id: int = 1,
        pool: WorkerPool | None = None,
        byzantine: ByzantineNodes | None = None,
    ) -> None:
        if not node_configs:
            raise ValueError("an in-process federation needs at least one node")
        self.client_app = client_app
        self.pool = pool
        self.byzantine = byzantine
        self._run = Run.create_empty(run_id)
        self._run_config = dict(run_config)
        self._node_configs = {FIRST_NODE_ID + i: config for i, config in enumerate(node_configs)}
        self.contexts: dict[int, Context] = {}  # made on a node's first message
        self._replies: dict[str, Message] = {}

    def save_node_states(self, run_dir: Path, server_round: int) -> None:
        """Write every node's Context beside the server's checkpoint of ``server_round``."""
        save_contexts(run_dir, server_round, self.contexts)

    def restore_node_states(self, run_dir: Path, server_round: int) -> None:
        """Put back the Contexts saved with the server's checkpoint of ``server_round``."""
        restore_contexts(
            run_dir, server_round, node_configs=self._node_configs, context=self.context
        )

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
        return list(self._node_configs)

    def context(self, node_id: int) -> Context:
        """Node ``node_id``'s Context, made on first use and kept for the whole run."""
        if node_id not in self.contexts:
            self.contexts[node_id] = Context(
                run_id=self._run.run_id,
                node_id=node_id,
                node_config=dict(self._node_configs[node_id]),
                state=RecordDict(),
                run_config=dict(self._run_config),
            )
        return self.contexts[node_id]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver the messages to their nodes' ClientApps now; keep the replies for pulling."""
        messages = list(messages)
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            message.metadata.__dict__["_run_id"] = self._run.run_id
        known = [m for m in messages if m.metadata.dst_node_id in self._node_configs]
        byzantine = self.byzantine
        delivered = {id(m): byzantine.outgoing(m) if byzantine else m for m in known}
        if self.pool is None:
            with one_torch_thread():
                replies = {
                    id(m): call_client_app(
                        self.client_app, delivered[id(m)], self.context(m.metadata.dst_node_id)
                    )
                    for m in known
                }
        else:
            replies = {}
            for wave in _waves(known):  # a node's messages in turn: its state goes along
                tasks = [(delivered[id(m)], self.context(m.metadata.dst_node_id)) for m in wave]
                for message, (_, context), (reply, state) in zip(
                    wave, tasks, self.pool.run(tasks), strict=True
                ):
                    context.state = state
                    replies[id(message)] = reply
        if byzantine is not None:
            replies = {id(m): byzantine.incoming(m, replies[id(m)]) for m in known}
        for reply in replies.values():  # they stay in this process: Flower's FedAvg decodes faster
            if not reply.has_error():
                decode_fast(reply.content)
        ids = []
        for message in messages:
            reply = replies.get(id(message))
            if reply is None:
                reason = f"no node with id {message.metadata.dst_node_id}"
                reply = Message(Error(code=ErrorCode.UNKNOWN, reason=reason), reply_to=message)
            reply.metadata.__dict__["_message_id"] = str(uuid4())
            self._replies[message.metadata.message_id] = reply
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(mid) for mid in message_ids if mid in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def _waves(messages: list[Message]) -> list[list[Message]]:
    """Split into batches in which each node has at most one message, keeping order."""
    waves: list[list[Message]] = []
    seen: list[set[int]] = []
    for message in messages:
        node = message.metadata.dst_node_id
        wave = next((i for i, nodes in enumerate(seen) if node not in nodes), len(waves))
        if wave == len(waves):
            waves.append([])
            seen.append(set())
        waves[wave].append(message)
        seen[wave].add(node)
    return waves
