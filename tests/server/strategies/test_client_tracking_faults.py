"""ClientTracking names every sampled node that failed a round, and how."""

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from client.client_app import app
from fedmodel.config import RunConfig
from fedmodel.data import load_splits
from fedmodel.models import build_model
from server.strategies.client_tracking import ClientTracking
from simulations.engines.inprocess import InProcessGrid

VALUES = {"batch-size": 32, "noise-multiplier": 1.5, "target-epsilon": 0.0}


SIMULATED = {"simulated": True}


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def _round(min_train_replies: int):
    """One round on 5 nodes: one trains, one raises, one refuses by its policy, one is
    declared down, one is silent."""
    config = RunConfig.from_mapping(VALUES)
    grid = InProcessGrid(
        client_app=app,
        run_config=config.to_mapping(),
        node_configs=[
            {**SIMULATED, "partition-id": 0, "num-partitions": 3},
            {**SIMULATED, "partition-id": 9, "num-partitions": 3},  # its ClientApp raises
            {**SIMULATED, "partition-id": 1, "num-partitions": 3, "min-noise-multiplier": 2.0},
            {**SIMULATED, "partition-id": 1, "num-partitions": 3},
            {**SIMULATED, "partition-id": 2, "num-partitions": 3},
        ],
    )
    splits = load_splits(config)
    model = build_model(
        "mlp", input_shape=splits.input_shape, num_classes=splits.num_classes, hidden_sizes=(64,)
    )
    strategy = ClientTracking(
        FedAvg(fraction_train=1.0, fraction_evaluate=0.0),
        require_ledger=True,
        min_train_replies=min_train_replies,
        round_timeout=30,
    )
    sent = sorted(
        strategy.configure_train(1, ArrayRecord(model.state_dict()), ConfigRecord(), grid),
        key=lambda m: m.metadata.dst_node_id,
    )
    replies = list(grid.pull_messages(grid.push_messages(sent[:3])))
    # The SuperLink answers for node 1004 (heartbeat expired); node 1005 never answers.
    sent[3].metadata.__dict__["_message_id"] = "down"
    sent[4].metadata.__dict__["_message_id"] = "silent"
    unavailable = Message(
        Error(code=ErrorCode.NODE_UNAVAILABLE, reason="Node Unavailable"), reply_to=sent[3]
    )
    unavailable.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
    arrays, _ = strategy.aggregate_train(1, [*replies, unavailable])
    return strategy, arrays


def test_each_failed_node_is_named_with_its_reason():
    strategy, arrays = _round(min_train_replies=1)
    assert arrays is not None and strategy.last_round_updated
    assert strategy.last_round_trained == 1
    failures = "\n".join(strategy.last_round_failures)
    assert "node 1002: ConfigError: partition-id 9 is out of range for 3 partitions" in failures
    assert (
        "node 1003: PolicyRefusal: noise multiplier 1.5 is below this node's minimum 2 "
        "(node-config min-noise-multiplier)" in failures
    )
    assert "node 1004: Node Unavailable" in failures
    assert "node 1005: no reply within 30 s" in failures
    assert len(strategy.last_round_failures) == 4
    assert strategy.epsilon_line().startswith("ε by client: partition-0 (node 1001) ")


def test_too_few_updates_leave_the_global_model_unchanged():
    strategy, arrays = _round(min_train_replies=2)
    assert arrays is None and not strategy.last_round_updated
    assert strategy.last_round_trained == 1 and len(strategy.last_round_failures) == 4


def test_a_ledger_that_did_not_grow_by_the_reported_steps_is_dropped():
    config = RunConfig.from_mapping(VALUES)
    grid = InProcessGrid(
        client_app=app,
        run_config=config.to_mapping(),
        node_configs=[{**SIMULATED, "partition-id": 0, "num-partitions": 3}],
    )
    model = build_model("mlp", input_shape=(64,), num_classes=10, hidden_sizes=(64,))
    fedavg = FedAvg(fraction_train=1.0, min_train_nodes=1, min_available_nodes=1)
    strategy = ClientTracking(fedavg, require_ledger=True)

    def train_round(server_round: int):
        sent = list(
            strategy.configure_train(
                server_round, ArrayRecord(model.state_dict()), ConfigRecord(), grid
            )
        )
        return list(grid.pull_messages(grid.push_messages(sent)))

    first = train_round(1)
    strategy.aggregate_train(1, first)
    assert strategy.last_round_trained == 1
    grid.contexts.clear()  # the node lost its Context and, with no state-dir, its ledger
    strategy.aggregate_train(2, train_round(2))
    assert strategy.last_round_trained == 0
    assert "at least" in strategy.last_round_failures[0]
    assert "expected" in strategy.last_round_failures[0]
