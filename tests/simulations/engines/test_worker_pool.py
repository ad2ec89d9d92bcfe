"""Worker processes of the in-process engine: bit-identical results, a crash fails one client."""

import json

import pytest
import torch

from simulations import simulate
from simulations.engines.inprocess import FIRST_NODE_ID, InProcessGrid
from simulations.engines.worker_pool import WorkerPool, load_client_app

SMALL = {"num-server-rounds": 2, "learning-rate": 1.0, "batch-size": 32}


def _weights(run_dir):
    return torch.load(run_dir / "model.pt")


def _ledgers(run_dir):
    return {p.name: json.loads(p.read_text()) for p in sorted((run_dir / "privacy").glob("*.json"))}


@pytest.mark.slow
def test_worker_processes_give_the_sequential_engines_results_bit_for_bit(tmp_path):
    sequential_run = simulate({**SMALL, "run-dir": str(tmp_path / "sequential")}, num_clients=4)
    pooled = simulate({**SMALL, "run-dir": str(tmp_path / "pooled")}, num_clients=4, workers=2)
    first, second = _weights(sequential_run.run_dir), _weights(pooled.run_dir)
    assert all(torch.equal(first[name], second[name]) for name in first)
    # The ledgers, kept in each node's Context across rounds, match too: 2 rounds of steps.
    ledgers = _ledgers(pooled.run_dir)
    assert ledgers == _ledgers(sequential_run.run_dir)
    assert len(ledgers) == 4
    # 1,437 training digits, 359 or 360 per client: 2 rounds x ceil(359 / 32) Poisson steps.
    assert all(ledger["steps_total"] == 2 * 12 for ledger in ledgers.values())
    assert [r.epsilon_max for r in pooled.rounds] == [r.epsilon_max for r in sequential_run.rounds]


@pytest.mark.slow
def test_a_dying_worker_fails_only_its_client_and_node_state_persists(
    crashing_app, train_messages
):
    nodes = [FIRST_NODE_ID + i for i in range(4)]
    with WorkerPool(client_app=crashing_app, num_workers=2) as pool:
        grid = InProcessGrid(
            client_app=load_client_app(crashing_app),
            run_config={},
            node_configs=[{"partition-id": i, "num-partitions": 4} for i in range(4)],
            pool=pool,
        )
        first = list(grid.send_and_receive(train_messages(grid, nodes, crash=True)))
        second = list(grid.send_and_receive(train_messages(grid, nodes, crash=False)))
    assert [m.metadata.src_node_id for m in first] == nodes  # replies in message order
    assert "died (exit code 3)" in first[1].error.reason
    assert first[2].error.reason == "ValueError: no data here"
    assert [first[0].content["count"]["calls"], first[3].content["count"]["calls"]] == [1, 1]
    # Round two, whichever worker serves: state came back with each reply; the node
    # whose worker died kept its old (empty) state.
    calls = [m.content["count"]["calls"] for m in (second[0], second[1], second[3])]
    assert calls == [2, 1, 2]
    assert not second[2].has_content()
