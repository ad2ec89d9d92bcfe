"""How the in-process engine and its workers call the ClientApp: one torch thread, and an
exception as an error reply. One module both import, so neither imports the other."""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator
from typing import Any

import torch
from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode

TORCH_THREADS = 1  # per client-training process (see one_torch_thread)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Train clients with one torch thread, then restore the setting (the server's
    evaluation of the global model on the test set does gain from more).

    Per-client batches are small: intra-op threads cost more than they give, and under
    load (workers, other jobs) they fight over the cores (a DP-SGD step measured 25x
    slower with two threads on two busy cores). Workers use one thread too, so results
    are bit-identical with and without them.
    """
    with torch_threads(TORCH_THREADS):
        yield


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads, then restore the setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def call_client_app(client_app: Any, message: Message, context: Context) -> Message:
    """Run the ClientApp on one message; an exception becomes an error reply."""
    try:
        return client_app(message, context)
    except Exception as error:  # noqa: BLE001 - a failing client is reported, not fatal
        # Same shape as Flower's simulation engine: the error travels in the reply.
        traceback.print_exc()
        return Message(
            Error(
                code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                reason=f"{type(error).__name__}: {error}",
            ),
            reply_to=message,
        )
