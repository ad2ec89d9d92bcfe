"""A progress bar over rounds, pinned under the server's per-round lines on a terminal.

The ServerApp prints one line per round and writes the run folder just before. On a
terminal, :class:`RoundProgress` keeps one extra line at the bottom: a bar with the
rounds done, the last test accuracy and ε (with δ and the accountant), elapsed and
estimated remaining time. Every line the run prints (stdout, stderr, Flower's log)
still scrolls above it unchanged. When the output is not a terminal (a file, a pipe,
CI) nothing is added: the plain per-round lines are the progress report.

tqdm would do the drawing but is not a dependency; a pinned single line is ~100 lines.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TextIO

from fedmodel.config import RunConfig
from fedmodel.privacy.ledger import ACCOUNTANT_NAMES
from fedmodel.results import RoundMetrics, load_metrics

CLEAR_LINE = "\r\x1b[K"
BAR_WIDTH = 20
REDRAW_SECONDS = 1.0


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal that understands ``\\r`` and ANSI clear."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty()) and os.environ.get("TERM", "") != "dumb"
    except ValueError:  # closed, e.g. a logging handler's stream that outlived its capture
        return False


def format_bar(
    *,
    label: str,
    rounds: list[RoundMetrics],
    num_rounds: int,
    config: RunConfig,
    elapsed: float,
    width: int = 100,
) -> str:
    """The bar's text, e.g. ``run 1/4 [#####-----] 5/10 | acc 0.9012 | ε 1.93 (δ=1e-05, RDP) |
    12s, ~12s left``, cut to ``width`` characters."""
    done = len(rounds)
    filled = min(BAR_WIDTH, round(BAR_WIDTH * done / num_rounds))
    parts = [f"{label} [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {done}/{num_rounds}".strip()]
    if rounds:
        last = rounds[-1]
        accuracy = last.test_accuracy
        if math.isnan(accuracy):  # no central test set: the clients' own evaluation
            accuracy = getattr(last, "client_accuracy", math.nan)
        parts += [f"acc {accuracy:.4f}", epsilon_text(last, config)]
    timing = f"{elapsed:.0f}s"
    if 0 < done < num_rounds:
        timing += f", ~{elapsed / done * (num_rounds - done):.0f}s left"
    parts.append(timing)
    text = " | ".join(parts)
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


class RoundProgress:
    """Context manager showing a progress bar for the run writing ``run_dir``.

    Parameters
    ----------
    run_dir : path-like
        The run folder the ServerApp writes (its ``metrics.json`` is read after each
        printed line).
    config : RunConfig
        The run's config (rounds, DP, δ, accountant).
    label : str
        Text before the bar (e.g. ``"run 2/6"``).
    enabled : bool
        ``False`` disables the bar everywhere; it is also off when stdout is not a terminal.
    stream : text stream, optional
        The terminal (default ``sys.stdout``).
    """

    def __init__(
        self,
        *,
        run_dir: str | os.PathLike[str],
        config: RunConfig,
        label: str = "",
        enabled: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.config = config
        self.label = label
        self.stream = stream or sys.stdout
        self.enabled = enabled and is_terminal(self.stream)
        self._lock = threading.RLock()
        self._visible = False
        self._rounds: list[RoundMetrics] = []
        self._seen: tuple[int, int, int] | None = None  # metrics.json's inode, size, mtime
        self._started = 0.0
        self._stop = threading.Event()
        self._restore: list[Callable[[], object]] = []
        self._terminal = self.stream

    def __enter__(self) -> RoundProgress:
        if not self.enabled:
            return self
        self._started = time.perf_counter()
        self._restore.append(lambda s=sys.stdout: setattr(sys, "stdout", s))
        sys.stdout = _PassThrough(self, sys.stdout)
        if is_terminal(sys.stderr):
            self._restore.append(lambda s=sys.stderr: setattr(sys, "stderr", s))
            sys.stderr = _PassThrough(self, sys.stderr)
        # Logging handlers (Flower's, and the root one Opacus installs) hold their own
        # reference to the terminal stream: route them through the bar too.
        for logger in (logging.getLogger(), logging.getLogger("flwr")):
            for handler in logger.handlers:
                stream = getattr(handler, "stream", None)
                if isinstance(handler, logging.StreamHandler) and is_terminal(stream):
                    previous = handler.setStream(_PassThrough(self, stream))
                    self._restore.append(lambda h=handler, s=previous: h.setStream(s))
        self._draw()
        threading.Thread(target=self._tick, name="round-progress", daemon=True).start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.enabled:
            return
        self._stop.set()
        with self._lock:
            self._clear()
            for restore in reversed(self._restore):
                restore()
            self._restore.clear()

    # -- drawing ----------------------------------------------------------------------

    def write_through(self, target: TextIO, text: str) -> None:
        """Write ``text`` to ``target`` above the bar; redraw the bar after a full line."""
        with self._lock:
            self._clear()
            target.write(text)
            target.flush()
            if text.endswith("\n"):
                self._draw()

    def _clear(self) -> None:
        if self._visible:
            self._terminal.write(CLEAR_LINE)
            self._terminal.flush()
            self._visible = False

    def _draw(self) -> None:
        self._refresh()
        width = shutil.get_terminal_size((100, 24)).columns - 1
        text = format_bar(
            label=self.label,
            rounds=self._rounds,
            num_rounds=self.config.num_server_rounds,
            config=self.config,
            elapsed=time.perf_counter() - self._started,
            width=width,
        )
        self._terminal.write(CLEAR_LINE + text)
        self._terminal.flush()
        self._visible = True

    def _refresh(self) -> None:
        """Re-read ``metrics.json`` when it changed (the server rewrites it every round)."""
        try:
            stat = (self.run_dir / "metrics.json").stat()
        except OSError:
            return
        # Not the mtime alone: two rewrites within one clock tick of the filesystem (a few
        # ms) share it; each atomic rewrite is a new file, and the file grows every round.
        seen = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if seen != self._seen:
            try:
                self._rounds = load_metrics(self.run_dir)
                self._seen = seen
            except (OSError, ValueError, TypeError):
                pass  # caught mid-write on a filesystem without atomic rename: next time

    def _tick(self) -> None:
        """Keep the elapsed time moving during long rounds."""
        while not self._stop.wait(REDRAW_SECONDS):
            with self._lock:
                if self._visible and not self._stop.is_set():
                    self._draw()


class _PassThrough:
    """A text stream that writes to ``target`` through :meth:`RoundProgress.write_through`."""

    def __init__(self, progress: RoundProgress, target: TextIO) -> None:
        self._progress = progress
        self._target = target

    def write(self, text: str) -> int:
        self._progress.write_through(self._target, text)
        return len(text)

    def flush(self) -> None:
        self._target.flush()

    def __getattr__(self, name: str):
        return getattr(self._target, name)


def epsilon_text(metrics: RoundMetrics, config: RunConfig) -> str:
    """ε of a round with what it means (δ, accountant), or ∞ without DP."""
    if not config.dp or math.isinf(metrics.epsilon_max):
        return "ε ∞ (DP off)"
    accountant = ACCOUNTANT_NAMES[config.accountant]
    return f"ε {metrics.epsilon_max:.3g} (δ={config.delta:g}, {accountant})"
