"""The in-process engine's nodes in a checkpoint: Contexts back exactly, mismatches refused."""

from __future__ import annotations

import pytest

from fedmodel.results.checkpoint import CheckpointError
from simulations.engines.inprocess import FIRST_NODE_ID, InProcessGrid
from simulations.engines.worker_pool import load_client_app


def _grid(app, *, nodes: int = 3, noise: str = "seeded") -> InProcessGrid:
    return InProcessGrid(
        client_app=load_client_app(app),
        run_config={"seed": 0},
        node_configs=[
            {"partition-id": i, "num-partitions": nodes, "noise-source": noise}
            for i in range(nodes)
        ],
    )


def test_a_restored_grid_continues_every_nodes_context(tmp_path, crashing_app, train_messages):
    grid = _grid(crashing_app)
    for _ in range(2):
        grid.send_and_receive(train_messages(grid, [FIRST_NODE_ID], crash=False))
    grid.save_node_states(tmp_path, 2)

    resumed = _grid(crashing_app)
    resumed.restore_node_states(tmp_path, 2)
    assert sorted(resumed.contexts) == [FIRST_NODE_ID]  # only nodes that had a message
    (reply,) = resumed.send_and_receive(train_messages(resumed, [FIRST_NODE_ID], crash=False))
    assert reply.content["count"]["calls"] == 3  # the third call of that node, not its first


def test_other_clients_or_another_noise_source_are_refused(tmp_path, crashing_app, train_messages):
    grid = _grid(crashing_app)
    grid.send_and_receive(train_messages(grid, [FIRST_NODE_ID + 1], crash=False))
    grid.save_node_states(tmp_path, 1)
    with pytest.raises(CheckpointError, match="node 1002, which this federation of 1 nodes"):
        _grid(crashing_app, nodes=1).restore_node_states(tmp_path, 1)
    with pytest.raises(CheckpointError, match="differs from the checkpoint's in noise-source"):
        _grid(crashing_app, noise="secure").restore_node_states(tmp_path, 1)
    with pytest.raises(CheckpointError, match="round 2 but clients.pt holds round 1"):
        _grid(crashing_app).restore_node_states(tmp_path, 2)
