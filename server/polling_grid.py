"""A Grid wrapper that collects replies promptly.

Flower 1.42's deployment Grid (``HttpGrid.send_and_receive``) checks for replies every
3 s, so every round waits on average 1.5 s after its last reply has arrived. This
wrapper implements ``send_and_receive`` with the Grid's own ``push_messages`` and
``pull_messages`` and a short interval; everything else is delegated unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from server.delegating_grid import DelegatingGrid

POLL_INTERVAL_S = 0.1


class PromptGrid(DelegatingGrid):
    """Delegate to ``grid``; in ``send_and_receive`` poll every ``interval`` seconds.

    Parameters
    ----------
    grid : Grid
        The Grid Flower gave the ServerApp.
    interval : float
        Seconds between two checks for replies.
    clock, sleep : callable
        The time and the wait between checks (injected by tests, so that they do not
        depend on the machine's load).
    """

    def __init__(
        self,
        grid: Grid,
        *,
        interval: float = POLL_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        super().__init__(grid)
        self.interval = interval
        self.clock = clock
        self.sleep = sleep

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push ``messages``; return the replies that arrive within ``timeout`` seconds.

        Replies come back in the order the messages were pushed (aggregation sums
        floating-point updates, so a fixed order keeps runs reproducible).
        """
        pending = [mid for mid in self.grid.push_messages(messages) if mid]
        order = {mid: position for position, mid in enumerate(pending)}
        deadline = None if timeout is None else self.clock() + timeout
        replies: list[Message] = []
        while pending:
            arrived = list(self.grid.pull_messages(pending))
            replies.extend(arrived)
            answered = {reply.metadata.reply_to_message_id for reply in arrived}
            pending = [mid for mid in pending if mid not in answered]
            if not pending or (deadline is not None and self.clock() >= deadline):
                break
            self.sleep(self.interval)
        return sorted(replies, key=lambda r: order.get(r.metadata.reply_to_message_id, len(order)))
