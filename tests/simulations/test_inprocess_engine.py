"""The in-process engine: reproducible, the same with worker processes, flat in clients."""

import json
import sys
import textwrap

import pytest
import torch
from flwr.app import ConfigRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from simulations import simulate
from simulations.inprocess import FIRST_NODE_ID, InProcessGrid
from simulations.worker_pool import WorkerPool, load_client_app

SMALL = {"num-server-rounds": 2, "learning-rate": 1.0, "batch-size": 32}


def _weights(run_dir):
    return torch.load(run_dir / "model.pt")


def _ledgers(run_dir):
    return {p.name: json.loads(p.read_text()) for p in sorted((run_dir / "privacy").glob("*.json"))}


@pytest.fixture(scope="module")
def sequential_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "sequential"
    return simulate({**SMALL, "run-dir": str(run_dir)}, num_clients=4)


def test_same_seed_gives_bit_identical_final_weights(sequential_run, tmp_path):
    again = simulate({**SMALL, "run-dir": str(tmp_path / "again")}, num_clients=4)
    other = simulate({**SMALL, "seed": 1, "run-dir": str(tmp_path / "other")}, num_clients=4)
    first, second = _weights(sequential_run.run_dir), _weights(again.run_dir)
    assert all(torch.equal(first[name], second[name]) for name in first)
    accuracies = [r.test_accuracy for r in sequential_run.rounds]
    assert [r.test_accuracy for r in again.rounds] == accuracies
    third = _weights(other.run_dir)
    assert not all(torch.equal(first[name], third[name]) for name in first)


def test_worker_processes_give_the_sequential_engines_results_bit_for_bit(
    sequential_run, tmp_path
):
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


CRASHING_APP = textwrap.dedent(
    """
    import os

    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()


    @app.train()
    def train(msg, context):
        partition = context.node_config["partition-id"]
        if partition == 1 and msg.content["config"]["crash"]:
            os._exit(3)  # the worker process dies mid-task
        if partition == 2:
            raise ValueError("no data here")
        calls = int(context.state["count"]["calls"]) + 1 if "count" in context.state else 1
        context.state["count"] = ConfigRecord({"calls": calls, "pid": os.getpid()})
        return Message(RecordDict({"count": ConfigRecord({"calls": calls})}), reply_to=msg)
    """
)


@pytest.fixture()
def crashing_app(tmp_path, monkeypatch):
    (tmp_path / "crashing_client_app.py").write_text(CRASHING_APP)
    monkeypatch.syspath_prepend(str(tmp_path))  # workers get this process's sys.path
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    yield "crashing_client_app:app"
    sys.modules.pop("crashing_client_app", None)


def _train_messages(grid, nodes, *, crash):
    return [
        grid.create_message(
            RecordDict({"config": ConfigRecord({"crash": crash})}), "train", node, group_id="1"
        )
        for node in nodes
    ]


def test_a_dying_worker_fails_only_its_client_and_node_state_persists(crashing_app):
    nodes = [FIRST_NODE_ID + i for i in range(4)]
    with WorkerPool(client_app=crashing_app, num_workers=2) as pool:
        grid = InProcessGrid(
            client_app=load_client_app(crashing_app),
            run_config={},
            node_configs=[{"partition-id": i, "num-partitions": 4} for i in range(4)],
            pool=pool,
        )
        first = list(grid.send_and_receive(_train_messages(grid, nodes, crash=True)))
        second = list(grid.send_and_receive(_train_messages(grid, nodes, crash=False)))
    assert [m.metadata.src_node_id for m in first] == nodes  # replies in message order
    assert "died (exit code 3)" in first[1].error.reason
    assert first[2].error.reason == "ValueError: no data here"
    assert [first[0].content["count"]["calls"], first[3].content["count"]["calls"]] == [1, 1]
    # Round two, whichever worker serves: state came back with each reply; the node
    # whose worker died kept its old (empty) state.
    calls = [m.content["count"]["calls"] for m in (second[0], second[1], second[3])]
    assert calls == [2, 1, 2]
    assert not second[2].has_content()


def test_contexts_exist_only_for_nodes_that_got_a_message(crashing_app):
    grid = InProcessGrid(
        client_app=load_client_app(crashing_app),
        run_config={"seed": 0},
        node_configs=[{"partition-id": i, "num-partitions": 10_000} for i in range(10_000)],
    )
    assert len(list(grid.get_node_ids())) == 10_000
    nodes = [FIRST_NODE_ID, FIRST_NODE_ID + 5_000, FIRST_NODE_ID + 9_999]
    replies = list(grid.send_and_receive(_train_messages(grid, nodes, crash=False)))
    assert [r.content["count"]["calls"] for r in replies] == [1, 1, 1]
    assert sorted(grid.contexts) == nodes
    unknown = grid.send_and_receive(_train_messages(grid, [42], crash=False))
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
