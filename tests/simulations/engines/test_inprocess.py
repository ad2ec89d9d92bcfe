"""The in-process engine: reproducible, flat in the number of clients."""

import json

import torch

from simulations import simulate
from simulations.engines.inprocess import FIRST_NODE_ID, InProcessGrid
from simulations.engines.worker_pool import load_client_app

SMALL = {"num-server-rounds": 2, "learning-rate": 1.0, "batch-size": 32}


def _weights(run_dir):
    return torch.load(run_dir / "model.pt")


def _ledgers(run_dir):
    return {p.name: json.loads(p.read_text()) for p in sorted((run_dir / "privacy").glob("*.json"))}


def test_same_seed_gives_bit_identical_final_weights(tmp_path):
    sequential_run = simulate({**SMALL, "run-dir": str(tmp_path / "first")}, num_clients=4)
    again = simulate({**SMALL, "run-dir": str(tmp_path / "again")}, num_clients=4)
    other = simulate({**SMALL, "seed": 1, "run-dir": str(tmp_path / "other")}, num_clients=4)
    first, second = _weights(sequential_run.run_dir), _weights(again.run_dir)
    assert all(torch.equal(first[name], second[name]) for name in first)
    accuracies = [r.test_accuracy for r in sequential_run.rounds]
    assert [r.test_accuracy for r in again.rounds] == accuracies
    third = _weights(other.run_dir)
    assert not all(torch.equal(first[name], third[name]) for name in first)


def test_contexts_exist_only_for_nodes_that_got_a_message(crashing_app, train_messages):
    grid = InProcessGrid(
        client_app=load_client_app(crashing_app),
        run_config={"seed": 0},
        node_configs=[{"partition-id": i, "num-partitions": 10_000} for i in range(10_000)],
    )
    assert len(list(grid.get_node_ids())) == 10_000
    nodes = [FIRST_NODE_ID, FIRST_NODE_ID + 5_000, FIRST_NODE_ID + 9_999]
    replies = list(grid.send_and_receive(train_messages(grid, nodes, crash=False)))
    assert [r.content["count"]["calls"] for r in replies] == [1, 1, 1]
    assert sorted(grid.contexts) == nodes
    unknown = grid.send_and_receive(train_messages(grid, [42], crash=False))
    assert next(iter(unknown)).error.reason == "no node with id 42"


def test_ten_thousand_synthetic_clients_run_and_only_sampled_ones_keep_a_ledger(tmp_path):
    result = simulate(
        {
            "dataset": "synthetic",
            "num-server-rounds": 2,
            "fraction-train": 0.001,  # 10 of 10,000 per round
            "learning-rate": 0.1,
            "target-epsilon": 0,  # fixed noise: no per-client calibration to wait for
            "noise-multiplier": 1.0,
            "run-dir": str(tmp_path / "run"),
        },
        num_clients=10_000,
    )
    assert [r.clients_trained for r in result.rounds] == [10, 10]
    assert 10 < len(_ledgers(result.run_dir)) <= 20
    assert result.final.epsilon_max > 0
