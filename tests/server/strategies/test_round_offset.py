"""RoundOffset: a resumed run's rounds carry their true numbers to every part."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from server.strategies.round_offset import RoundOffset
from simulations.engines.inprocess import InProcessGrid


class Rounds(FedAvg):
    """FedAvg that notes the round of every call."""

    def __init__(self) -> None:
        super().__init__(fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
        self.calls: list[tuple[str, int]] = []

    def configure_train(self, server_round, arrays, config, grid):
        self.calls.append(("configure_train", server_round))
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        self.calls.append(("aggregate_train", server_round))
        return None, None

    def configure_evaluate(self, server_round, arrays, config, grid):
        self.calls.append(("configure_evaluate", server_round))
        return []

    def aggregate_evaluate(self, server_round, replies):
        self.calls.append(("aggregate_evaluate", server_round))
        return None


def test_two_rounds_after_three_are_rounds_four_and_five_everywhere(monkeypatch):
    for name, value in {"_task_id": 1, "_run_id": 1, "_node_id": SUPERLINK_NODE_ID}.items():
        monkeypatch.setattr(TaskIdentity, name, value)  # who stamps the messages
    inner = Rounds()
    sent: list[int] = []
    grid = InProcessGrid(client_app=None, run_config={}, node_configs=[{}])
    grid.send_and_receive = lambda messages, timeout=None: sent.extend(  # type: ignore[method-assign]
        int(m.content["config"]["server-round"]) for m in messages
    ) or []
    evaluated: list[int] = []

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        evaluated.append(server_round)
        return MetricRecord({})

    offset = RoundOffset(inner, offset=3)
    offset.start(
        grid=grid,
        initial_arrays=ArrayRecord(),
        num_rounds=2,
        train_config=ConfigRecord(),
        evaluate_fn=offset.evaluate_fn(evaluate),
    )
    assert sent == [4, 5]  # the clients' server-round
    assert [r for name, r in inner.calls if name == "configure_train"] == [4, 5]
    assert {r for _, r in inner.calls} == {4, 5}
    assert evaluated == [0, 4, 5]  # Flower's initial evaluation stays round 0
