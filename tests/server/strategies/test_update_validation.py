"""Update validation: no reply of another model, no non-finite value, no unbounded update,
and no non-finite aggregate reaches the global model; every rejection is named and counted."""

import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedAvgM, FedMedian
from flwr.supercore.task_identity import TaskIdentity

from fedmodel.config import RunConfig
from fedmodel.models import build_model
from fedmodel.results import RunFolder, load_metrics
from server.round_recorder import RoundRecorder
from server.strategies.client_tracking import ClientTracking
from server.strategies.update_validation import UpdateValidator, all_finite, update_norm
from simulations import simulate
from simulations.engines.inprocess import InProcessGrid

GLOBAL = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(3, np.float32)}
ONE_NODE = {"fraction_evaluate": 0.0, "min_train_nodes": 1, "min_available_nodes": 1}


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.asarray(value)) for name, value in arrays.items()})


def _sent(strategy: ClientTracking, nodes: int) -> list[Message]:
    """Round 1's training messages to ``nodes`` nodes (1001, 1002, ...), stamped with ids."""
    grid = InProcessGrid(client_app=None, run_config={}, node_configs=[{}] * nodes)
    sent = list(strategy.configure_train(1, _record(GLOBAL), ConfigRecord(), grid))
    for message in sent:
        message.metadata.__dict__["_message_id"] = f"to-{message.metadata.dst_node_id}"
    return sorted(sent, key=lambda m: m.metadata.dst_node_id)


def _reply(sent: Message, arrays: dict[str, np.ndarray], *, weight: float = 10) -> Message:
    content = RecordDict(
        {"arrays": _record(arrays), "metrics": MetricRecord({"num-examples": weight})}
    )
    return Message(content, reply_to=sent)


def _honest(value: float) -> dict[str, np.ndarray]:
    return {name: np.full_like(array, value) for name, array in GLOBAL.items()}


def _tracking(strategy=None, **kwargs) -> ClientTracking:
    strategy = strategy or FedAvg(**ONE_NODE)
    return ClientTracking(strategy, require_ledger=False, **kwargs)


def _aggregate(strategy: ClientTracking, replies: list) -> dict[str, np.ndarray] | None:
    """Replies ``replies[i]`` (arrays, or (arrays, weight)) from node 1001 + i."""
    sent = _sent(strategy, len(replies))
    messages = []
    for to, reply in zip(sent, replies, strict=True):
        arrays, weight = reply if isinstance(reply, tuple) else (reply, 10)
        messages.append(_reply(to, arrays, weight=weight))
    arrays, _ = strategy.aggregate_train(1, messages)
    return None if arrays is None else {name: a.numpy() for name, a in arrays.items()}


def test_a_nan_reply_and_a_misshapen_reply_are_rejected_named_and_left_out():
    strategy = _tracking()
    nan = _honest(np.nan)
    misshapen = {"w": np.ones((2, 3), np.float32), "b": np.ones(3, np.float32)}
    arrays = _aggregate(strategy, [_honest(1.0), nan, misshapen, _honest(3.0)])
    assert arrays is not None and all(np.isfinite(a).all() for a in arrays.values())
    np.testing.assert_array_equal(arrays["w"], np.full((3, 2), 2.0, np.float32))  # honest mean
    assert strategy.last_round_trained == 2 and strategy.last_round_updated
    assert strategy.last_round_rejections == [
        "node 1002: array 'w' holds 6 non-finite values (NaN or Inf)",
        "node 1003: array 'w' has shape (2, 3) and dtype float32; the global model's has "
        "(3, 2) and float32",
    ]
    assert strategy.last_round_failures == []  # rejected, not failed: counted apart


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ({**GLOBAL, "w": np.full((3, 2), np.inf, np.float32)}, "array 'w' holds 6 non-finite"),
        ({**GLOBAL, "b": np.zeros(3, np.float64)}, "array 'b' has shape (3,) and dtype float64"),
        ({"w": GLOBAL["w"]}, "the reply's model lacks array 'b'"),
        (
            {**GLOBAL, "extra": np.zeros(1, np.float32)},
            "the reply's model has unexpected array 'extra'",
        ),
        ((GLOBAL, math.nan), "metric 'num-examples' must be a finite number > 0"),
        ((GLOBAL, 0), "metric 'num-examples' must be a finite number > 0"),
    ],
    ids=["inf", "dtype", "missing", "unexpected", "nan-weight", "zero-weight"],
)
def test_a_reply_that_is_not_the_global_models_is_rejected(reply, reason):
    strategy = _tracking()
    assert _aggregate(strategy, [_honest(1.0), reply]) is not None
    assert strategy.last_round_trained == 1
    assert len(strategy.last_round_rejections) == 1
    assert strategy.last_round_rejections[0].startswith(f"node 1002: {reason}")


def test_a_reply_with_two_array_records_is_rejected_not_a_crash():
    strategy = _tracking()
    sent = _sent(strategy, 2)
    doubled = _reply(sent[1], _honest(1.0))
    doubled.content["other"] = _record(GLOBAL)
    arrays, _ = strategy.aggregate_train(1, [_reply(sent[0], _honest(1.0)), doubled])
    assert arrays is not None
    assert strategy.last_round_rejections == [
        "node 1002: reply carries 2 array records; expected 1"
    ]


def test_arrays_in_another_order_are_put_in_the_global_order():
    strategy = _tracking(FedMedian(**ONE_NODE))
    reordered = {"b": np.full(3, 5.0, np.float32), "w": np.full((3, 2), 5.0, np.float32)}
    arrays = _aggregate(strategy, [_honest(5.0), reordered, _honest(5.0)])
    assert list(arrays) == ["w", "b"] and not strategy.last_round_rejections
    np.testing.assert_array_equal(arrays["b"], np.full(3, 5.0, np.float32))


def test_max_update_norm_rejects_or_clips_a_long_update():
    long = {"w": np.array([[3, 4], [0, 0], [0, 0]], np.float32), "b": np.zeros(3, np.float32)}
    reject = _tracking(max_update_norm=1.0, update_norm_policy="reject")
    assert _aggregate(reject, [_honest(0.1), long])["w"][0, 0] == pytest.approx(0.1)
    assert reject.last_round_rejections == [
        "node 1002: update norm 5 exceeds run-config max-update-norm 1 "
        "(update-norm-policy = 'reject')"
    ]
    clip = _tracking(max_update_norm=1.0, update_norm_policy="clip")
    arrays = _aggregate(clip, [long])
    assert not clip.last_round_rejections and clip.last_round_trained == 1
    np.testing.assert_allclose(arrays["w"][0], [0.6, 0.8])  # scaled down to norm 1
    assert update_norm(arrays, GLOBAL) == pytest.approx(1.0)


def test_an_update_within_the_bound_is_aggregated_as_sent():
    validator = UpdateValidator(max_update_norm=10.0, policy="clip")
    validator.use_reference(_record(GLOBAL))
    content = RecordDict(
        {"arrays": _record(_honest(1.0)), "metrics": MetricRecord({"num-examples": 3})}
    )
    verdict = validator.check(content)
    assert verdict.content is content and not verdict.clipped
    assert verdict.norm == pytest.approx(3.0)  # sqrt(9 ones)


class _PoisonedAggregate(FedAvgM):
    """A stateful strategy whose second aggregate, and the state it keeps, are not finite."""

    def aggregate_train(self, server_round, replies):
        arrays, metrics = super().aggregate_train(server_round, replies)
        if server_round == 2:
            arrays = self.current_arrays = _record(_honest(np.inf))
        return arrays, metrics


def test_a_non_finite_aggregate_is_not_adopted_and_the_strategy_state_is_kept():
    strategy = _tracking(_PoisonedAggregate(server_momentum=0.5, **ONE_NODE))
    grid = InProcessGrid(client_app=None, run_config={}, node_configs=[{}])

    def train_round(server_round: int, arrays: dict[str, np.ndarray]):
        (sent,) = strategy.configure_train(server_round, _record(arrays), ConfigRecord(), grid)
        sent.metadata.__dict__["_message_id"] = f"round-{server_round}"
        return strategy.aggregate_train(server_round, [_reply(sent, _honest(1.0))])

    first, _ = train_round(1, GLOBAL)
    assert first is not None and strategy.last_round_updated
    second, metrics = train_round(2, {k: a.numpy() for k, a in first.items()})
    assert second is None and metrics is None and not strategy.last_round_updated
    assert strategy.unchanged_reason == "the aggregate is not finite"
    kept = strategy.strategy.current_arrays  # FedAvgM's state: as after round 1
    assert all_finite(kept)
    assert all(np.isfinite(v).all() for v in strategy.strategy.momentum_vector)
    for name, array in first.items():
        np.testing.assert_array_equal(kept[name].numpy(), array.numpy())


def test_the_round_counts_and_prints_rejections_and_a_kept_model(tmp_path, capsys):
    config = RunConfig.from_mapping({"num-server-rounds": 3, "dp": False})
    model = build_model("mlp", input_shape=(64,), num_classes=10, hidden_sizes=(8,))
    folder = RunFolder(tmp_path / "run")
    folder.create(config)
    strategy = _tracking()
    recorder = RoundRecorder(config, model=model, test=None, strategy=strategy, folder=folder)
    recorder(0, ArrayRecord(model.state_dict()))
    strategy.last_round_trained, strategy.last_round_updated = 8, True
    strategy.last_round_rejections = ["node 1002: array 'w' holds 6 non-finite values (NaN or Inf)"]
    recorder(1, ArrayRecord(model.state_dict()))
    strategy.last_round_rejections, strategy.last_round_updated = [], False
    strategy._kept_because = "the aggregate is not finite"
    recorder(2, ArrayRecord(model.state_dict()))
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("round 1/3 | ") and out[0].endswith(" s")
    assert " | 8 clients | 1 rejected | " in out[0]
    assert out[1] == "  rejected: node 1002: array 'w' holds 6 non-finite values (NaN or Inf)"
    assert "rejected" not in out[2]
    assert out[3] == "  global model unchanged: the aggregate is not finite"
    rounds = load_metrics(folder.path)
    assert [r.clients_rejected for r in rounds] == [1, 0]
    header = (folder.path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "clients_rejected" in header


def test_a_nan_client_in_a_five_client_run_is_rejected_every_round(tmp_path, capsys):
    """The issue's run: one of 5 clients replies NaN weights; the model stays finite."""
    result = simulate(
        {
            "num-server-rounds": 2, "dp": False, "learning-rate": 0.5,
            "run-dir": str(tmp_path / "r"),
            "byzantine-fraction": 0.2, "byzantine-attack": "nan",
        },
        num_clients=5,
    )
    assert [r.clients_rejected for r in result.rounds] == [1, 1]
    assert [r.clients_trained for r in result.rounds] == [4, 4]
    assert result.final.test_accuracy > 0.5
    state = torch.load(result.run_dir / "model.pt")
    assert all(torch.isfinite(tensor).all() for tensor in state.values())
    out = capsys.readouterr().out
    assert out.count("| 1 rejected |") == 2 and "non-finite values (NaN or Inf)" in out
