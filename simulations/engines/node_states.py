"""The simulated nodes' Contexts in a run's checkpoint (``checkpoint/clients.pt``).

A simulated node keeps its privacy state in its Flower ``Context`` (``client-privacy``:
the run's ledger and the noise calibrated for the run); unlike a deployed node it has no
``state-dir`` ledger that outlives the process. So whenever the ServerApp checkpoints
round ``k`` (:class:`server.checkpointing.NodeStateKeeper`), the in-process engine first
writes every node's Context state here, with ``k``; a resumed run puts the states back
before round ``k + 1`` and refuses a file of another round, other nodes or another node
config (:func:`fedmodel.results.checkpoint.load_client_states`).

A Context's ``state`` is a Flower ``RecordDict``, stored as Flower's own protobuf bytes:
every record (config, metric, array) comes back bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from fedmodel.results.checkpoint import CheckpointError, load_client_states, save_client_states


def save_contexts(run_dir: Path, server_round: int, contexts: Mapping[int, Context]) -> None:
    """Write every node's Context state (and node config) after ``server_round``."""
    nodes = {
        node_id: {
            "node-config": dict(context.node_config),
            "state": recorddict_to_proto(context.state).SerializeToString(),
        }
        for node_id, context in contexts.items()
    }
    save_client_states(run_dir, server_round=server_round, nodes=nodes)


def restore_contexts(
    run_dir: Path,
    server_round: int,
    *,
    node_configs: Mapping[int, Mapping[str, Any]],
    context: Callable[[int], Context],
) -> None:
    """Put back the node states saved with the checkpoint of ``server_round``.

    Parameters
    ----------
    run_dir : Path
        The run folder.
    server_round : int
        The round of the server's checkpoint.
    node_configs : mapping of node id to node config
        This federation's nodes.
    context : callable
        ``context(node_id)`` returns that node's Context (made on first use).

    Raises
    ------
    CheckpointError
        The file is missing, damaged, of another round, or names a node this
        federation does not have, or one whose node config differs (another number of
        clients, another noise source, other data).
    """
    saved = load_client_states(run_dir, server_round=server_round)
    for node_id, entry in sorted(saved.items()):
        if node_id not in node_configs:
            raise CheckpointError(
                f"the checkpoint holds node {node_id}, which this federation of "
                f"{len(node_configs)} nodes does not have; resume with the run's clients"
            )
        current, kept = dict(node_configs[node_id]), dict(entry["node-config"])
        if current != kept:
            keys = sorted(k for k in set(current) | set(kept) if current.get(k) != kept.get(k))
            raise CheckpointError(
                f"node {node_id}'s node config differs from the checkpoint's in "
                f"{', '.join(keys)} (now {[current.get(k) for k in keys]}, checkpoint "
                f"{[kept.get(k) for k in keys]}); resume with the run's clients and "
                "noise source"
            )
    for node_id, entry in sorted(saved.items()):
        context(node_id).state = recorddict_from_proto(ProtoRecordDict.FromString(entry["state"]))
