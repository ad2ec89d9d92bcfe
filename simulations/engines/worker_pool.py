"""Worker processes that run the ClientApp for the in-process engine.

Each worker imports the ClientApp once and then serves message after message, keeping
everything the ClientApp caches per process (datasets, partitions, the RDP cache) across
rounds. A task carries the message (the global weights and the round's config) and the
node's :class:`~flwr.app.Context`; the answer carries the reply and the node's updated
Context state. The engine keeps every node's Context, so any idle worker can serve any
node and a node's state (its privacy ledger) persists across rounds whichever worker
trained it: the design of Flower's Ray backend, which also ships the Context to its
actors and back.

Why not ``multiprocessing.Pool``: it cannot say which task a dead worker was running
(here a crash fails that one client, as in Flower), and its spawn / forkserver workers
re-run the caller's main script, which breaks scripts without a ``__main__`` guard.
Workers here are plain Python processes running :func:`serve`, each talking
to the engine over a private socket pair (POSIX).

Each worker trains with one torch thread (as Flower's Ray actors with one CPU do):
per-client batches are small, and intra-op threads of several processes fight over the
cores. Results do not depend on which worker ran a task, so a run is bit-identical with
any number of workers, and to the sequential engine (which also uses one thread).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode

_WORKER_MAIN = (
    "import sys; from multiprocessing.connection import Connection; "
    "from simulations.engines.worker_pool import serve; "
    "serve(Connection(int(sys.argv[1])), sys.argv[2])"
)


def load_client_app(reference: str) -> Any:
    """Import ``"package.module:attribute"`` (how Flower names apps in pyproject.toml)."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"client app reference {reference!r} must look like 'package.module:app'")
    return getattr(importlib.import_module(module_name), attribute)


@dataclass
class _Worker:
    process: subprocess.Popen
    connection: Connection


class WorkerPool:
    """``num_workers`` processes, each running the ClientApp named by ``client_app``.

    Workers start at once and import in the background; the first :meth:`run` waits
    for them only as far as it has to.

    Parameters
    ----------
    client_app : str
        Import reference of the ClientApp, e.g. ``"client.client_app:app"``.
    num_workers : int
        Number of processes (at least 1).
    """

    def __init__(self, *, client_app: str, num_workers: int) -> None:
        if num_workers < 1:
            raise ValueError(f"number of workers must be >= 1, got {num_workers}")
        if os.name != "posix":
            raise RuntimeError("worker processes need a POSIX system; use workers = 0")
        load_client_app(client_app)  # fail here, not in every worker, on a bad reference
        self.client_app = client_app
        self._workers: list[_Worker | None] = []
        try:
            for _ in range(num_workers):
                self._workers.append(self._start())
        except BaseException:
            self.close()
            raise

    @property
    def num_workers(self) -> int:
        return len(self._workers)

    def run(self, tasks: Sequence[tuple[Message, Context]]) -> list[tuple[Message, RecordDict]]:
        """Run every ``(message, context)`` through the ClientApp; answers in task order.

        An answer is the reply and the context's new state. If a worker dies, its task's
        reply is an error, the context's state stays as it was, and a new worker starts.
        """
        answers: list[tuple[Message, RecordDict] | None] = [None] * len(tasks)
        pending = deque(range(len(tasks)))
        busy: dict[int, int] = {}  # worker slot -> task index
        while pending or busy:
            for slot in range(len(self._workers)):
                if pending and slot not in busy:
                    worker = self._workers[slot] or self._restart(slot)
                    index = pending.popleft()
                    try:
                        worker.connection.send((index, *tasks[index]))
                    except OSError:  # the worker is gone: fail this task as a crash
                        answers[index] = self._died(slot, tasks[index])
                        continue
                    busy[slot] = index
            by_connection = {self._workers[slot].connection: slot for slot in busy}  # type: ignore[union-attr]
            for ready in wait(list(by_connection)):
                slot = by_connection[ready]
                index = busy.pop(slot)
                try:
                    answer_index, reply, state = ready.recv()  # type: ignore[union-attr]
                except (EOFError, OSError):
                    answers[index] = self._died(slot, tasks[index])
                    continue
                if answer_index != index:
                    raise RuntimeError(f"worker answered task {answer_index}, expected {index}")
                answers[index] = (reply, state)
        return answers  # type: ignore[return-value]

    def close(self) -> None:
        """Stop every worker (politely, then by force)."""
        for worker in self._workers:
            if worker is not None:
                try:
                    worker.connection.send(None)
                except OSError:
                    pass
        deadline = time.monotonic() + 2  # a worker still importing has nothing to lose
        for worker in self._workers:
            if worker is not None:
                _stop(worker, timeout=max(0.0, deadline - time.monotonic()))
        self._workers = [None] * len(self._workers)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _start(self) -> _Worker:
        ours, theirs = Pipe(duplex=True)  # a socket pair on POSIX
        # The worker must import what this process can: hand it our sys.path.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.curdir for p in sys.path)}
        env["OMP_NUM_THREADS"] = "1"  # as TORCH_THREADS, before torch starts its pool
        process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_MAIN, str(theirs.fileno()), self.client_app],
            pass_fds=[theirs.fileno()],
            env=env,
        )
        theirs.close()
        return _Worker(process=process, connection=ours)

    def _restart(self, slot: int) -> _Worker:
        worker = self._workers[slot] = self._start()
        return worker

    def _died(self, slot: int, task: tuple[Message, Context]) -> tuple[Message, RecordDict]:
        worker = self._workers[slot]
        assert worker is not None
        code = _stop(worker)
        self._workers[slot] = None  # a new one starts when next needed
        message, context = task
        reason = f"worker process {worker.process.pid} died (exit code {code}) in the ClientApp"
        error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason)
        return Message(error, reply_to=message), context.state


def _stop(worker: _Worker, *, timeout: float = 10) -> int | None:
    try:
        code = worker.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        worker.process.kill()
        code = worker.process.wait(timeout=10)
    worker.connection.close()
    return code


def serve(connection: Connection, client_app: str) -> None:
    """A worker's life: answer tasks until told to stop (``None``) or the engine is gone."""
    import signal

    import torch

    from simulations.engines.clientapp import TORCH_THREADS, call_client_app

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the engine's to handle
    torch.set_num_threads(TORCH_THREADS)
    app = load_client_app(client_app)
    while True:
        try:
            task = connection.recv()
        except EOFError:
            task = None
        if task is None:
            # Like multiprocessing's workers: skip interpreter teardown (seconds with torch
            # loaded); nothing is left to save.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        index, message, context = task
        reply = call_client_app(app, message, context)
        connection.send((index, reply, context.state))

