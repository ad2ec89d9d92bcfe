"""PromptGrid returns replies as soon as they are there, in push order, or at the timeout.

Time is a fake clock that only ``sleep`` advances, so the bounds hold on any machine load.
"""

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from server.polling_grid import PromptGrid
from simulations.engines.inprocess import InProcessGrid


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _echo(message: Message, context) -> Message:
    return Message(RecordDict({"c": ConfigRecord({"node": context.node_id})}), reply_to=message)


class LateGrid(InProcessGrid):
    """Replies become visible only ``delay`` seconds after the push (as over a network)."""

    def __init__(self, *, delay: float, clock: FakeClock, **kwargs) -> None:
        super().__init__(**kwargs)
        self.delay, self.clock, self.visible_at, self.pulls = delay, clock, 0.0, 0

    def push_messages(self, messages):
        self.visible_at = self.clock() + self.delay
        return super().push_messages(messages)

    def pull_messages(self, message_ids):
        self.pulls += 1
        if self.clock() < self.visible_at:
            return []
        return super().pull_messages(message_ids)


def _grid(delay: float, clock: FakeClock) -> LateGrid:
    return LateGrid(
        delay=delay, clock=clock, client_app=_echo, run_config={}, node_configs=[{}, {}, {}]
    )


def _messages(grid) -> list[Message]:
    return [
        Message(RecordDict(), dst_node_id=n, message_type="query")
        for n in reversed(list(grid.get_node_ids()))
    ]


def _prompt(grid: LateGrid, clock: FakeClock) -> PromptGrid:
    return PromptGrid(grid, interval=0.05, clock=clock, sleep=clock.sleep)


def test_replies_come_back_promptly_and_in_push_order():
    clock = FakeClock()
    grid = _grid(delay=0.3, clock=clock)
    replies = list(_prompt(grid, clock).send_and_receive(_messages(grid), timeout=10))
    # Collected at the first check after they arrived (Flower's HttpGrid checks every 3 s).
    assert 0.3 <= clock() < 0.3 + 0.05 + 1e-9
    assert [r.content["c"]["node"] for r in replies] == [1003, 1002, 1001]
    assert grid.pulls >= 2


def test_the_timeout_ends_the_wait_with_what_arrived():
    clock = FakeClock()
    grid = _grid(delay=60, clock=clock)
    replies = list(_prompt(grid, clock).send_and_receive(_messages(grid), timeout=0.5))
    assert replies == [] and 0.5 <= clock() < 0.5 + 0.05 + 1e-9


def test_interval_must_be_positive():
    with pytest.raises(ValueError, match="interval must be > 0"):
        PromptGrid(_grid(delay=0, clock=FakeClock()), interval=0)
