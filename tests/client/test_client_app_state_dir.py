"""A node's ledger in its ``state-dir``: ε carries from round to round and run to run.

Whatever the server does - a new run, a reused run id, another seed, a lost Context (a
SuperNode restart), two ClientApp processes at once - the ledger's steps equal the
steps released.
"""

import math

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from opacus.accountants import RDPAccountant

from client.client_app import app
from fedmodel.config import RunConfig
from fedmodel.data import load_splits, partition_sizes
from fedmodel.models import build_model
from fedmodel.training import sample_rate_for, steps_per_epoch_for

VALUES = {
    "batch-size": 32,
    "noise-multiplier": 1.5,
    "target-epsilon": 0.0,
    "delta": 1e-5,
    "learning-rate": 1.0,
}
NODE = {"partition-id": 0, "num-partitions": 2}


def context_for(run_id: int, state_dir=None, node=None, **overrides) -> Context:
    node_config = {**NODE, **(node or {})}
    if state_dir is not None:
        node_config["state-dir"] = str(state_dir)
    return Context(
        run_id=run_id,
        node_id=5,
        node_config=node_config,
        state=RecordDict(),
        run_config=RunConfig.from_mapping({**VALUES, **overrides}).to_mapping(),
    )


def send_train(context: Context, server_round: int) -> Message:
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
    return app(Message(content, dst_node_id=5, message_type=MessageType.TRAIN), context)


def train_ok(context: Context, server_round: int) -> Message:
    reply = send_train(context, server_round)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    return reply


def _steps_per_round() -> int:
    size = partition_sizes(RunConfig.from_mapping(VALUES), num_partitions=2)[0]
    return steps_per_epoch_for(size, 32)


def _epsilon_after(rounds: int) -> tuple[int, float]:
    size = partition_sizes(RunConfig.from_mapping(VALUES), num_partitions=2)[0]
    accountant = RDPAccountant()
    accountant.history = [(1.5, sample_rate_for(size, 32), rounds * _steps_per_round())]
    return rounds * _steps_per_round(), accountant.get_epsilon(delta=1e-5)


def _stored_steps(reply: Message) -> int:
    return sum(reply.content["privacy"]["steps"])


def test_second_run_continues_from_the_first_without_counting_twice(tmp_path):
    first = context_for(101, tmp_path)
    epsilons = [float(train_ok(first, r).content["privacy"]["epsilon"]) for r in (1, 2)]
    assert epsilons[1] == pytest.approx(_epsilon_after(2)[1], abs=1e-6)  # not 1 + 2 rounds

    privacy = train_ok(context_for(102, tmp_path), 1).content["privacy"]
    steps, epsilon = _epsilon_after(3)
    assert sum(privacy["steps"]) == steps
    assert float(privacy["epsilon"]) == pytest.approx(epsilon, abs=1e-6)
    assert float(privacy["epsilon"]) > epsilons[-1]


def test_reused_run_id_changed_seed_and_lost_context_keep_every_step(tmp_path):
    per_round = _steps_per_round()
    train_ok(context_for(7, tmp_path), 1)
    train_ok(context_for(7, tmp_path), 1)  # reused run id, fresh Context (a restart)
    train_ok(context_for(8, tmp_path, seed=123), 1)  # another seed: not a fresh ledger
    # Another partitioner: other records of the same dataset, composed on the same key
    # (a partition is a simulation device; counting them together over-counts, safely).
    reply = train_ok(context_for(9, tmp_path, partitioner="dirichlet"), 1)
    assert _stored_steps(reply) == 3 * per_round + int(reply.content["metrics"]["steps"])
    assert len(list(tmp_path.glob("privacy-ledger-*.json"))) == 1


def test_two_processes_from_one_context_both_land(tmp_path):
    context = context_for(11, tmp_path)
    train_ok(context, 1)
    copy = Context(
        run_id=11,
        node_id=5,
        node_config=dict(context.node_config),
        state=RecordDict(dict(context.state)),  # both start from the same state
        run_config=dict(context.run_config),
    )
    train_ok(context, 2)
    reply = train_ok(copy, 2)
    assert _stored_steps(reply) == 3 * _steps_per_round()


def test_other_data_on_the_same_node_keeps_its_own_ledger(tmp_path):
    train_ok(context_for(201, tmp_path), 1)
    other = context_for(202, tmp_path, node={"partition-id": 1})
    size = partition_sizes(RunConfig.from_mapping(VALUES), num_partitions=2)[1]
    assert _stored_steps(train_ok(other, 1)) == steps_per_epoch_for(size, 32)
    assert len(list(tmp_path.glob("privacy-ledger-digits-*.json"))) == 2


def test_a_run_without_dp_leaves_the_data_without_a_finite_guarantee(tmp_path):
    allows = {"require-dp": False}
    train_ok(context_for(301, tmp_path, node=allows), 1)
    train_ok(context_for(302, tmp_path, node=allows, dp=False), 1)
    reply = train_ok(context_for(303, tmp_path, node=allows), 1)
    assert math.isinf(float(reply.content["privacy"]["epsilon"]))


def test_a_damaged_ledger_file_fails_the_round_with_its_path(tmp_path):
    train_ok(context_for(401, tmp_path), 1)
    (path,) = tmp_path.glob("privacy-ledger-*.json")
    path.write_text("garbage")
    reply = send_train(context_for(402, tmp_path), 1)
    assert reply.has_error()
    assert f"LedgerError: privacy ledger file {path} cannot be read" in reply.error.reason
