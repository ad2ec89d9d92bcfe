"""The run folder: resolved config, per-round metrics, final model, each client's ledger.

Files are rewritten atomically after every round, so a run that dies keeps everything
up to its last finished round. During a run the writes go to a write-behind thread
(:mod:`fedmodel.results.write_behind`), in order, finished before the run returns.

Layout::

    <run-dir>/
      config.json          resolved run config (+ how the run was driven)
      metrics.json         one object per round (see RoundMetrics)
      metrics.csv          the same, as a table
      model.pt             global model state dict (loads into build_model(name, ...))
      privacy/<client>.json  each client's ledger: accountant history, δ, ε
      privacy.json, privacy.md  the privacy report (fedmodel/results/privacy_report.py)
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import torch

from fedmodel.atomic_files import write_all_atomically, write_atomically
from fedmodel.config import ConfigError, RunConfig
from fedmodel.privacy.ledger import ACCOUNTANT_NAMES
from fedmodel.results.privacy_report import privacy_markdown
from fedmodel.results.write_behind import write_later


@dataclass(frozen=True)
class RoundMetrics:
    """What one round produced, as printed and stored.

    ``epsilon_max`` / ``epsilon_mean`` are over every client that has trained so far,
    each client's ε being cumulative over all its DP-SGD steps in the run (and earlier
    runs, for a node that keeps its ledger). ``test_*`` are ``nan`` when central
    evaluation is off; ``client_*`` are the clients' own evaluation of the global model
    (weighted by their examples), ``nan`` when no client evaluated. ``clients_rejected``
    counts the training replies that arrived but were not aggregated because their update
    failed validation (wrong arrays, non-finite values, an update norm over the bound).
    ``bytes_sent`` is the serialised size (Flower's protobuf records) of the round's
    training replies, ``bytes_uncompressed`` their size with full weights in place of a
    compressed update (run-config ``update-compression``); ``bytes_ratio`` is
    ``bytes_sent / bytes_uncompressed`` (1 without compression, ``nan`` with no reply).
    ``user_epsilon`` is the user-level ε of the federation after this round (DP-FedAvg,
    run-config ``privacy-unit``; δ and accountant in ``privacy.json``), ``nan`` without it.
    """

    round: int
    test_accuracy: float
    test_loss: float
    epsilon_max: float
    epsilon_mean: float
    clients_trained: int
    clients_failed: int
    train_loss: float
    seconds: float
    client_accuracy: float = math.nan
    client_loss: float = math.nan
    clients_rejected: int = 0
    bytes_sent: int = 0
    bytes_uncompressed: int = 0
    bytes_ratio: float = math.nan
    user_epsilon: float = math.nan

    def line(self, *, num_rounds: int, dp: bool, compressed: bool = False) -> str:
        """The one line printed per round (with the bytes sent when ``compressed``)."""
        privacy = (
            f"ε max {self.epsilon_max:.3f} mean {self.epsilon_mean:.3f}" if dp else "ε ∞ (DP off)"
        )
        if not math.isnan(self.user_epsilon):  # user-level DP (privacy-unit user or both)
            user = f"user-level ε {self.user_epsilon:.3f}"
            privacy = f"{privacy} | {user}" if dp else user
        failed = f" | {self.clients_failed} failed" if self.clients_failed else ""
        if self.clients_rejected:
            failed += f" | {self.clients_rejected} rejected"
        if compressed:
            failed += f" | {self.bytes_sent / 1e6:.3f} MB sent ({self.bytes_ratio:.3f}x)"
        evaluation = f"test acc {self.test_accuracy:.4f} | test loss {self.test_loss:.4f}"
        if math.isnan(self.test_accuracy) and not math.isnan(self.client_accuracy):
            evaluation = (
                f"client acc {self.client_accuracy:.4f} | client loss {self.client_loss:.4f}"
            )
        return (
            f"round {self.round:>{len(str(num_rounds))}}/{num_rounds} | {evaluation} | "
            f"{privacy} | {self.clients_trained} clients{failed} | {self.seconds:.2f} s"
        )


def privacy_header(config: RunConfig) -> str:
    """The line that says what every printed ε means."""
    user = ""
    if config.privacy_unit != "record":
        sampling = (
            "Poisson client sampling, add/remove one client"
            if config.client_sampling == "poisson"
            else "fixed-size cohort without replacement, replace-one client"
        )
        user = (
            f"user-level ε: DP-FedAvg over whole clients (z = {config.user_noise_multiplier:g}, "
            f"{config.user_clipping} clipping C = {config.user_clipping_norm:g}), RDP "
            f"accountant (Flower's, dp_accounting), δ = {config.delta:g}, composed over every "
            f"noised round, {sampling}; noise drawn by the server"
        )
    if not config.dp:
        if user:
            return f"{user}. Clients train without DP-SGD (dp = false): no record-level ε."
        return "DP off: plain SGD, no privacy guarantee (ε = ∞)."
    if user:
        return f"{_record_header(config)}\n{user}"
    return _record_header(config)


def _record_header(config: RunConfig) -> str:
    return (
        f"ε: record-level DP per client, composed over every DP-SGD step on its data, "
        f"{ACCOUNTANT_NAMES[config.accountant]} accountant, δ = {config.delta:g}; noise and "
        "batches drawn by each node from its own noise-source"
    )


def default_run_dir(config: RunConfig, *, root: str | os.PathLike[str] = "runs") -> Path:
    """A new, unused folder name under ``root``: ``<time>-<dataset>-<model>[-n]``."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{stamp}-{config.dataset}-{config.model}{'-dp' if config.dp else ''}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


class RunFolder:
    """Writes one run's results; every write is atomic (temp file, then rename)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.rounds: list[RoundMetrics] = []
        self._rendered: dict[int, _RenderedRound] = {}  # by id(metrics): see _write_metrics
        self._pending: dict[Path, str | bytes] | None = None  # inside batch(): not yet written

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Hold the writes made inside, then write them together (also when it raises).

        Each file is still written atomically and durably (temporary file, fsync,
        rename), but each folder is fsynced once for all its renames instead of once per
        file: a round of 100 clients wrote ~105 files, each with its own folder fsync.
        """
        if self._pending is not None:  # nested: the outer batch writes
            yield
            return
        self._pending = {}
        try:
            yield
        finally:
            pending, self._pending = self._pending, None
            if pending:
                write_later(functools.partial(write_all_atomically, pending))

    def _write(self, path: Path, data: str | bytes) -> None:
        """Write ``path`` atomically: now, or in the run's write-behind thread, in order.

        Inside :func:`~fedmodel.results.write_behind.write_behind` (the ServerApp's run)
        every write of the folder goes to the one background thread, so a later write of
        a file always lands after an earlier one.
        """
        if self._pending is None:
            write_later(functools.partial(write_atomically, path, data))
        else:
            self._pending[path] = data

    def create(self, config: RunConfig, *, extra: dict[str, Any] | None = None) -> None:
        """Make the folder (refusing one that already holds a run) and write the config."""
        check_new_run_dir(self.path)
        (self.path / "privacy").mkdir(parents=True, exist_ok=True)
        document = {"run_config": config.to_mapping(), **(extra or {})}
        self._write(self.path / "config.json", json.dumps(document, indent=2) + "\n")
        self._write_metrics()  # a run that ends before round 1 still has (empty) metrics

    def add_round(self, metrics: RoundMetrics) -> None:
        self.rounds.append(metrics)
        self._write_metrics()

    def _write_metrics(self) -> None:
        """``metrics.json`` (``json.dumps(rows, indent=2)``) and ``metrics.csv``, whole.

        Each round's JSON and CSV text is rendered once and kept: re-rendering every
        round each round made a run's writes grow with the square of its rounds. The
        files are the same text (tests/fedmodel/results/test_run_folder.py).
        """
        rendered = [self._rendered_row(r) for r in self.rounds]
        self._rendered = dict(zip(map(id, self.rounds), rendered, strict=True))
        rows = ",\n".join(r.json_entry for r in rendered)
        self._write(self.path / "metrics.json", f"[\n{rows}\n]\n" if rows else "[]\n")
        self._write(
            self.path / "metrics.csv", _csv_header() + "".join(r.csv_line for r in rendered)
        )

    def round_rows(self) -> list[dict[str, Any]]:
        """``asdict`` of every round so far (shared: copy before changing one)."""
        return [self._rendered_row(r).row for r in self.rounds]

    def _rendered_row(self, metrics: RoundMetrics) -> _RenderedRound:
        kept = self._rendered.get(id(metrics))
        if kept is not None and kept.metrics is metrics:
            return kept
        row = asdict(metrics)
        text = "\n".join("  " + line for line in json.dumps(row, indent=2).splitlines())
        buffer = io.StringIO()
        csv.DictWriter(buffer, fieldnames=_CSV_FIELDS).writerow(row)
        return _RenderedRound(metrics, row, text, buffer.getvalue())

    def save_model(self, state_dict: dict[str, torch.Tensor]) -> None:
        buffer = io.BytesIO()
        torch.save(state_dict, buffer)
        self._write(self.path / "model.pt", buffer.getvalue())

    def save_privacy_report(self, report: dict[str, Any]) -> None:
        """Write ``privacy.json`` and ``privacy.md`` (see ``privacy_report``)."""
        text = json.dumps(report, indent=2) + "\n"
        self._write(self.path / "privacy.json", text)
        self._write(self.path / "privacy.md", privacy_markdown(report))

    def save_ledger(self, client: str, ledger: dict[str, Any]) -> None:
        """Write ``privacy/<client>.json`` (``ledger`` holds history, δ, ε, ...)."""
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", client)
        text = json.dumps(ledger, indent=2) + "\n"
        self._write(self.path / "privacy" / f"{safe}.json", text)


class _RenderedRound(NamedTuple):
    """A round as ``asdict`` gives it, its metrics.json entry (indented as a list item)
    and its metrics.csv line."""

    metrics: RoundMetrics
    row: dict[str, Any]
    json_entry: str
    csv_line: str


_CSV_FIELDS = [f.name for f in fields(RoundMetrics)]


@functools.lru_cache(maxsize=1)
def _csv_header() -> str:
    buffer = io.StringIO()
    csv.DictWriter(buffer, fieldnames=_CSV_FIELDS).writeheader()
    return buffer.getvalue()


def load_metrics(run_dir: str | os.PathLike[str]) -> list[RoundMetrics]:
    """Read back ``metrics.json`` of a run folder."""
    rows = json.loads((Path(run_dir) / "metrics.json").read_text())
    return [RoundMetrics(**row) for row in rows]


def check_new_run_dir(path: str | os.PathLike[str]) -> None:
    """Refuse a run folder that already holds a run (raises ``ConfigError``)."""
    if (Path(path) / "config.json").exists():
        raise ConfigError(f"run-config key 'run-dir' = {str(path)!r} already holds a run")


__all__ = [
    "RoundMetrics",
    "RunFolder",
    "check_new_run_dir",
    "default_run_dir",
    "load_metrics",
    "privacy_header",
]
