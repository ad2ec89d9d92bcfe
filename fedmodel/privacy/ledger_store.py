"""A node's privacy ledgers on its own disk, so ε keeps growing from run to run.

A deployed node keeps its data between runs, and the privacy loss of that data adds up
over every run that trained on it. Within a run a client's ledger lives in Flower's
Context state; across runs it lives here, in a node-local directory: one JSON file per
data key (what data the node holds), holding each run's DP-SGD step history under that
run's id. The ε a node reports is the composition of every run's steps.

Keying the histories by run id is what keeps the two places from counting a step
twice: a run only ever rewrites its own entry (with its whole in-run history, from the
Context), and reads the other runs' entries as its starting point. Files are updated
under an exclusive lock and replaced atomically, so two runs on one node cannot lose
each other's steps and a crash leaves the previous file intact. Nothing is ever
dropped from a file; a file that cannot be read stops training rather than restarting
at ε = 0.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fedmodel.config import RunConfig

FORMAT_VERSION = 1


def data_identity(config: RunConfig, *, node_config: Mapping[str, Any]) -> dict[str, Any]:
    """What data a node trains on under ``config``: the description its ledger is kept by.

    The node's own ``data-path`` (made absolute when it is a path, kept as is for a
    ``package.module:function`` loader), or the run's dataset; plus, whenever the node
    holds one partition of it (``partition-id``), everything that decides that
    partition. A different partitioning of the same data counts as different data.
    """
    identity: dict[str, Any]
    if config.dataset == "custom" or "data-path" in node_config:
        path = str(node_config.get("data-path", config.data_path))
        identity = {"data-path": os.path.abspath(path) if os.path.exists(path) else path}
    else:
        identity = {"dataset": config.dataset}
    if config.dataset == "synthetic":
        identity.update(
            {
                "synthetic-alpha": config.synthetic_alpha,
                "synthetic-beta": config.synthetic_beta,
                "seed": config.seed,
            }
        )
    if "partition-id" in node_config:
        identity.update(
            {
                "seed": config.seed,
                "partitioner": config.partitioner,
                "partition-id": int(node_config["partition-id"]),
                "num-partitions": int(node_config["num-partitions"]),
            }
        )
        if config.partitioner == "dirichlet":
            identity["dirichlet-alpha"] = config.dirichlet_alpha
        if config.partitioner == "shards":
            identity["shards-per-client"] = config.shards_per_client
    return identity


def data_key(description: Mapping[str, Any]) -> str:
    """A file-name-safe key for the data a node holds.

    Parameters
    ----------
    description : mapping
        JSON-serialisable facts that identify the data (e.g. dataset name, partition,
        or the path of the node's own data). Equal descriptions give equal keys.

    Returns
    -------
    str
        ``<readable prefix>-<16 hex digits of SHA-256 of the canonical JSON>``.
    """
    if not description:
        raise ValueError("a data description needs at least one entry")
    canonical = json.dumps(dict(description), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
    first = str(description[min(description)])  # e.g. "dataset" or "data-path" comes first
    prefix = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(first).name or first)[:40].strip("._")
    return f"{prefix or 'data'}-{digest}"


class LedgerStore:
    """The privacy ledgers a node keeps in ``directory`` (created on first write).

    Parameters
    ----------
    directory : path
        Node-local directory (the ``state-dir`` node config). Keep it with the node's
        data: deleting it forgets the privacy already spent.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        if not str(directory):
            raise ValueError("the ledger directory must be a non-empty path")
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
            raise ValueError(f"ledger key {key!r} is not a plain file name")
        return self.directory / f"privacy-ledger-{key}.json"

    def read(self, key: str) -> dict[str, Any]:
        """The whole file for ``key`` (an empty document when there is none yet)."""
        path = self.path(key)
        if not path.exists():
            return {"format": FORMAT_VERSION, "data": {}, "runs": {}}
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"privacy ledger file {path} cannot be read: {error}") from error
        _check_document(document, path)
        return document

    def prior_history(self, key: str, *, run_id: int) -> list[list[float]]:
        """Every DP-SGD step entry ``[sigma, q, steps]`` of all runs but ``run_id``."""
        runs = self.read(key)["runs"]
        return [
            entry
            for other, run in sorted(runs.items(), key=lambda item: item[1]["first-recorded"])
            if other != str(run_id)
            for entry in run["history"]
        ]

    def record_run(
        self,
        key: str,
        *,
        run_id: int,
        history: list[list[float]],
        data: Mapping[str, Any],
    ) -> None:
        """Store ``history`` -- all steps of run ``run_id`` so far -- as that run's entry.

        A run's history only grows: fewer steps than stored are refused (that would
        mean steps were lost).
        """
        _check_history(history, f"run {run_id}")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        with _locked(path.with_suffix(".lock")):
            document = self.read(key)
            now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            previous = document["runs"].get(str(run_id))
            if previous is not None and _steps(previous["history"]) > _steps(history):
                raise ValueError(
                    f"run {run_id} would shrink its stored ledger in {path} from "
                    f"{_steps(previous['history'])} to {_steps(history)} steps; refusing"
                )
            document["data"] = dict(data)
            document["runs"][str(run_id)] = {
                "history": [list(entry) for entry in history],
                "first-recorded": previous["first-recorded"] if previous else now,
                "last-recorded": now,
            }
            _write_atomically(path, json.dumps(document, indent=1) + "\n")


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_atomically(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False, encoding="utf-8"
    ) as tmp:
        tmp.write(text)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp.name, path)


def _steps(history: list[list[float]]) -> int:
    return sum(int(entry[2]) for entry in history)


def _check_document(document: Any, path: Path) -> None:
    if not isinstance(document, dict) or document.get("format") != FORMAT_VERSION:
        raise ValueError(f"privacy ledger file {path} is not a format-{FORMAT_VERSION} ledger")
    runs = document.get("runs")
    if not isinstance(runs, dict):
        raise ValueError(f"privacy ledger file {path} has no 'runs' table")
    for run_id, run in runs.items():
        if not isinstance(run, dict) or "history" not in run or "first-recorded" not in run:
            raise ValueError(f"privacy ledger file {path}: run {run_id} is malformed")
        _check_history(run["history"], f"run {run_id} in {path}")


def _check_history(history: Any, where: str) -> None:
    if not isinstance(history, list) or not all(
        isinstance(entry, list | tuple)
        and len(entry) == 3
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in entry)
        and entry[0] >= 0
        and 0 < entry[1] <= 1
        and entry[2] >= 0
        for entry in history
    ):
        raise ValueError(
            f"privacy ledger of {where}: history must be [sigma >= 0, 0 < q <= 1, steps >= 0] "
            "entries"
        )
