"""Write-behind for a run's files: the round goes on while its files are written.

A round's run-folder files and checkpoint are written atomically and durably (temporary
file, fsync, rename, folder fsync); the fsyncs were a large part of a small round's time
outside training (tens of ms a round). Inside :func:`write_behind` those writes are
handed to one background thread instead, which performs them **in the order they were
submitted**, each exactly as before (atomic, fsynced). So at every instant the files on
disk are those of some earlier point of the run - what a crash at that point would have
left - and never a partial file: a checkpoint's ``clients.pt`` is still written before
its ``server.pt``, a round's metrics and model together.

Leaving the block waits until every write is on disk, whether the block ends or raises,
so a finished (or failed) run's folder is complete when the ServerApp returns. The first
write that fails stops the writes after it (the folder stays an earlier, consistent
state) and its error is raised in the run's thread at the next write handed over, or
when the block ends.

Writes made outside a :func:`write_behind` block (or from another thread) are performed
at once, as before.

A job hands over bytes already made: the thread only writes, fsyncs and renames, which
release the GIL. Work that holds it there (pickling a checkpoint) stalled the run's
thread, which gives up the GIL at every torch call and then waits to get it back: a
batched round of 10 digits clients took 32-39 ms with the checkpoints pickled in the
thread, 27-35 ms with them pickled in the run's thread (alternating runs, 2 cores).
"""

from __future__ import annotations

import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable, Iterator

Job = Callable[[], None]

# Jobs waiting before the run's thread waits for the disk: a round hands over a few
# (its run-folder batch, clients.pt, server.pt); a slow disk must not let memory grow.
MAX_PENDING = 16

_ACTIVE: contextvars.ContextVar[WriteBehind | None] = contextvars.ContextVar(
    "fedmodel_write_behind", default=None
)


class WriteBehindError(RuntimeError):
    """A write handed to the background thread failed; the files written before it stand."""


class WriteBehind:
    """One thread that runs submitted writes in submission order (see the module docstring)."""

    def __init__(self, *, max_pending: int = MAX_PENDING) -> None:
        self._jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(
            target=self._work, name="fedmodel-write-behind", daemon=True
        )
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job`` after those already queued; raise if an earlier one failed."""
        self._raise_failure()
        if self._closed:
            raise RuntimeError("the write-behind thread is closed")
        self._jobs.put(job)

    def close(self) -> None:
        """Flush, then end the thread; raise if a write failed."""
        if not self._closed:
            self._closed = True
            self._jobs.put(None)
            self._thread.join()
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise WriteBehindError(
                f"writing the run's files failed: {type(self._error).__name__}: {self._error}"
            ) from self._error

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                if self._error is None:  # after a failure: nothing more, the disk stays consistent
                    job()
            except BaseException as error:  # noqa: BLE001 - raised in the run's thread instead
                self._error = error
            finally:
                self._jobs.task_done()


@contextlib.contextmanager
def write_behind() -> Iterator[WriteBehind]:
    """Hand this thread's run-file writes (:func:`write_later`) to a background thread.

    Nested blocks share the outer one's thread. On leaving, every write is finished
    first; a failed write raises :class:`WriteBehindError` (or, when the block itself
    raised, is added to that exception as a note).
    """
    active = _ACTIVE.get()
    if active is not None:
        yield active
        return
    writer = WriteBehind()
    token = _ACTIVE.set(writer)
    try:
        yield writer
    except BaseException as error:
        _ACTIVE.reset(token)
        try:
            writer.close()
        except WriteBehindError as failure:
            error.add_note(str(failure))
        raise
    else:
        _ACTIVE.reset(token)
        writer.close()


def write_later(job: Job) -> None:
    """Run ``job`` (a complete, atomic write) in the write-behind thread, or now outside one.

    ``job`` must own everything it writes (bytes already serialised): the run goes on
    while it waits.
    """
    writer = _ACTIVE.get()
    if writer is None:
        job()
    else:
        writer.submit(job)


__all__ = ["WriteBehind", "WriteBehindError", "write_behind", "write_later"]
