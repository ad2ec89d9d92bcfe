"""ClientTracking turns compressed updates back into weights before validation, measures
the bytes of training replies, and rejects a malformed compressed reply."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from client.client_app import app
from fedmodel.config import RunConfig
from fedmodel.data import load_splits
from fedmodel.models import build_model
from fedmodel.records import COMPRESSED_ARRAYS_KEY
from server.strategies.client_tracking import ClientTracking
from simulations import simulate
from simulations.engines.inprocess import InProcessGrid

VALUES = {"batch-size": 32, "dp": False}
NODES = [{"simulated": True, "partition-id": i, "num-partitions": 3} for i in range(3)]


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def _replies(values: dict, nodes: list[dict] = NODES) -> tuple[ClientTracking, list[Message]]:
    config = RunConfig.from_mapping({**VALUES, **values})
    grid = InProcessGrid(client_app=app, run_config=config.to_mapping(), node_configs=nodes)
    splits = load_splits(config)
    torch.manual_seed(0)  # the same global model in every call
    model = build_model(
        "mlp", input_shape=splits.input_shape, num_classes=splits.num_classes, hidden_sizes=(64,)
    )
    strategy = ClientTracking(
        FedAvg(fraction_train=1.0, fraction_evaluate=0.0), require_ledger=False
    )
    sent = strategy.configure_train(1, ArrayRecord(model.state_dict()), ConfigRecord(), grid)
    replies = sorted(grid.pull_messages(grid.push_messages(sent)), key=_source)
    return strategy, replies


def _source(message: Message) -> int:
    return message.metadata.src_node_id


def _size(content: RecordDict) -> int:
    return len(recorddict_to_proto(content).SerializeToString())


# A small MLP (4874 values): each array's .npy header and name weigh in the ratio.
@pytest.mark.parametrize(
    "values, most",
    [
        ({"update-compression": "int8"}, 0.35),
        ({"update-compression": "topk", "topk-fraction": 0.01}, 0.12),
    ],
)
def test_bytes_are_the_serialised_size_of_the_replies(values, most):
    strategy, replies = _replies(values)
    assert all(COMPRESSED_ARRAYS_KEY in reply.content for reply in replies)
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and strategy.last_round_trained == 3
    assert strategy.last_round_bytes == sum(_size(reply.content) for reply in replies)
    # Uncompressed: what the same clients send without compression (same sizes).
    plain_strategy, plain = _replies({})
    plain_strategy.aggregate_train(1, plain)
    assert strategy.last_round_uncompressed_bytes == sum(_size(r.content) for r in plain)
    assert plain_strategy.last_round_bytes == plain_strategy.last_round_uncompressed_bytes
    assert strategy.last_round_bytes / strategy.last_round_uncompressed_bytes < most


def test_int8_reconstructs_the_weights_within_half_a_scale():
    strategy, replies = _replies({"update-compression": "int8"})
    plain_strategy, plain = _replies({})  # same seeds: the same trained weights
    strategy.aggregate_train(1, replies)
    rebuilt = strategy._reconstructed(replies[0], 1, 0)
    assert rebuilt is not None
    config = replies[0].content["compression"]
    scales = dict(zip(config["names"], config["scales"], strict=True))
    for name, array in plain[0].content["arrays"].items():
        scale = scales[name]
        error = np.abs(rebuilt.content["arrays"][name].numpy() - array.numpy()).max()
        assert error <= scale * 1.0001  # stochastic rounding: below one step


def _q(reply: Message) -> np.ndarray:
    return reply.content[COMPRESSED_ARRAYS_KEY]["q"].numpy()


def test_rounding_is_seeded_on_seeded_nodes_and_secure_on_secure_ones():
    seeded = [_q(r) for r in _replies({"update-compression": "int8"})[1]]
    assert all(np.array_equal(a, b) for a, b in zip(
        seeded, [_q(r) for r in _replies({"update-compression": "int8"})[1]], strict=True
    ))
    secure_nodes = [{**node, "noise-source": "secure"} for node in NODES]
    first, second = (
        [_q(r) for r in _replies({"update-compression": "int8"}, secure_nodes)[1]]
        for _ in range(2)
    )
    # Fresh secure randomness every run: the int8 values differ somewhere.
    assert any(not np.array_equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("tamper", ["truncate", "drop-scale", "lengths", "drop-config", "nan"])
def test_a_malformed_compressed_reply_is_rejected(tamper):
    strategy, replies = _replies({"update-compression": "int8"})
    content = replies[1].content
    arrays = dict(content[COMPRESSED_ARRAYS_KEY].items())
    config = ConfigRecord(dict(content["compression"].items()))
    if tamper == "truncate":
        arrays["q"] = Array(arrays["q"].numpy()[:-1].copy())
    elif tamper == "drop-scale":
        config["scales"] = config["scales"][:-1]
    elif tamper == "lengths":
        config["lengths"] = [n + 1 for n in config["lengths"]]
    elif tamper == "nan":
        config["scales"] = [float("nan")] * len(config["scales"])
    records = {
        key: record
        for key, record in content.items()
        if key not in (COMPRESSED_ARRAYS_KEY, "compression")
    }
    records[COMPRESSED_ARRAYS_KEY] = ArrayRecord(arrays)
    if tamper != "drop-config":
        records["compression"] = config
    replies[1] = Message(metadata=replies[1].metadata, content=RecordDict(records))
    arrays_out, _ = strategy.aggregate_train(1, replies)
    assert arrays_out is not None and strategy.last_round_trained == 2
    (rejection,) = strategy.last_round_rejections
    node = replies[1].metadata.src_node_id
    assert rejection.startswith(f"node {node}: ")


FAST = {"num-server-rounds": 2, "batch-size": 32, "dp": False, "seed": 7}


def test_a_compressed_run_ends_near_the_uncompressed_one(tmp_path):
    runs = {
        method: simulate(
            {**FAST, "update-compression": method, "run-dir": str(tmp_path / method)},
            num_clients=3,
        )
        for method in ("none", "int8")
    }
    plain, int8 = runs["none"].final, runs["int8"].final
    assert abs(plain.test_accuracy - int8.test_accuracy) < 0.02
    assert plain.bytes_ratio == 1.0 and 0.2 < int8.bytes_ratio < 0.35
    assert int8.bytes_sent < plain.bytes_sent == plain.bytes_uncompressed


def test_a_private_topk_run_trains(tmp_path):
    result = simulate(
        {
            **FAST,
            "dp": True,
            "target-epsilon": 0.0,
            "noise-multiplier": 1.0,
            "update-compression": "topk",
            "topk-fraction": 0.1,
            "run-dir": str(tmp_path / "topk"),
        },
        num_clients=3,
    )
    assert result.final.clients_trained == 3 and result.final.clients_rejected == 0
    assert result.final.bytes_ratio < 0.35  # the ledger record weighs in too
