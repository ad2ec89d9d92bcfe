"""A node with a ``state-dir`` carries its ε from run to run, counting each step once."""

import math

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from opacus.accountants import RDPAccountant

from client.client_app import app
from fedmodel.config import RunConfig
from fedmodel.data import load_splits, partition_sizes
from fedmodel.models import build_model
from fedmodel.training import sample_rate_for

VALUES = {
    "batch-size": 32,
    "noise-multiplier": 1.5,
    "target-epsilon": 0.0,
    "delta": 1e-5,
    "learning-rate": 1.0,
}
NODE = {"partition-id": 0, "num-partitions": 2}


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    # Flower's runtimes set who is sending; messages are stamped with it.
    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def _context(run_id: int, state_dir, **overrides) -> Context:
    return Context(
        run_id=run_id,
        node_id=5,
        node_config={**NODE, "state-dir": str(state_dir)},
        state=RecordDict(),
        run_config=RunConfig.from_mapping({**VALUES, **overrides}).to_mapping(),
    )


def _train(context: Context, server_round: int) -> Message:
    config = RunConfig.from_mapping(context.run_config)
    splits = load_splits(config)
    model = build_model(
        config.model,
        input_shape=splits.input_shape,
        num_classes=splits.num_classes,
        hidden_sizes=config.hidden_layer_sizes,
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "config": ConfigRecord({"server-round": server_round}),
        }
    )
    reply = app(Message(content, dst_node_id=5, message_type=MessageType.TRAIN), context)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    return reply


def _epsilon_after(rounds: int) -> tuple[int, float]:
    size = partition_sizes(RunConfig.from_mapping(VALUES), num_partitions=2)[0]
    q = sample_rate_for(size, 32)
    accountant = RDPAccountant()
    accountant.history = [(1.5, q, rounds * round(1 / q))]
    return rounds * round(1 / q), accountant.get_epsilon(delta=1e-5)


def test_second_run_continues_from_the_first_without_counting_twice(tmp_path):
    state = tmp_path / "state"
    first = _context(101, state)
    epsilons = [float(_train(first, r).content["privacy"]["epsilon"]) for r in (1, 2)]
    assert epsilons[1] == pytest.approx(_epsilon_after(2)[1], abs=1e-6)  # not 1 + 2 rounds

    second = _context(102, state)  # a new run: fresh Context, same node and data
    privacy = _train(second, 1).content["privacy"]
    steps, epsilon = _epsilon_after(3)
    assert sum(privacy["steps"]) == steps
    assert float(privacy["epsilon"]) == pytest.approx(epsilon, abs=1e-6)
    assert float(privacy["epsilon"]) > epsilons[-1]


def test_other_data_on_the_same_node_keeps_its_own_ledger(tmp_path):
    _train(_context(201, tmp_path), 1)
    other = _context(202, tmp_path)
    other.node_config["partition-id"] = 1
    size = partition_sizes(RunConfig.from_mapping(VALUES), num_partitions=2)[1]
    q = sample_rate_for(size, 32)
    assert sum(_train(other, 1).content["privacy"]["steps"]) == round(1 / q)
    assert len(list(tmp_path.glob("privacy-ledger-digits-*.json"))) == 2


def test_a_run_without_dp_leaves_the_data_without_a_finite_guarantee(tmp_path):
    _train(_context(301, tmp_path), 1)
    _train(_context(302, tmp_path, dp=False), 1)
    assert math.isinf(float(_train(_context(303, tmp_path), 1).content["privacy"]["epsilon"]))


def test_a_damaged_ledger_file_fails_the_round_with_its_path(tmp_path):
    _train(_context(401, tmp_path), 1)
    (path,) = tmp_path.glob("privacy-ledger-*.json")
    path.write_text("garbage")
    context = _context(402, tmp_path)
    config = RunConfig.from_mapping(context.run_config)
    splits = load_splits(config)
    model = build_model(
        "mlp", input_shape=splits.input_shape, num_classes=splits.num_classes, hidden_sizes=(64,)
    )
    content = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "config": ConfigRecord({"server-round": 1})}
    )
    with pytest.raises(ValueError, match=f"privacy ledger file {path} cannot be read"):
        app(Message(content, dst_node_id=5, message_type=MessageType.TRAIN), context)
