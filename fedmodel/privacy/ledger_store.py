"""A node's privacy ledgers on its own disk, so ε keeps growing from round to round and run to run.

A deployed node keeps its data between runs, and the privacy loss of that data adds up
over every run that trained on it. This store is the record of that loss: one JSON file
per data key (what data the node holds, chosen by the node), holding each run's DP-SGD
step entries under that run's id. The ε a node reports is the composition of every
entry in the file.

The file is append-only, which is what makes it hold against a server that would
like it smaller. The ClientApp appends a round's steps here, under an exclusive lock,
after training and before its update leaves the node; nothing is ever replaced or
dropped. So a reused run id continues that run's history, a SuperNode restart (which
loses Flower's in-memory Context) or two ClientApp processes of one node cannot lose
steps, and a changed run config cannot start a fresh file (the key does not depend on
it). Files are replaced atomically (temporary file, fsync, rename, fsync of the
directory), so a crash leaves the previous file intact; a file that cannot be read
stops training rather than restarting at ε = 0.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fedmodel.atomic_files import write_atomically

FORMAT_VERSION = 2
LEGACY_FORMAT = 1  # keyed by run-config values, one entry per run replaced each round


class LedgerError(ValueError):
    """A ledger file cannot be read or would be written wrongly (names the file, no data)."""


def data_identity(
    node_config: Mapping[str, Any], *, dataset: str, data_path: str = ""
) -> dict[str, Any]:
    """What data a node holds: the description its ledger is kept by, chosen by the node.

    The node's ``data-id`` when it sets one; else its own data location resolved
    (symbolic links and relative parts removed, so another spelling of the same path is
    the same key): ``data-path`` (a ``package.module:function`` loader is kept as
    written) or, for a built-in dataset, its name with the node's ``data-dir``. The
    node's ``partition-id`` / ``num-partitions`` are added when it has them (a
    simulation device: each partition is its own data). No run-config value other
    than the dataset's name (which names different records, not the same records
    anew) takes part, so a server cannot make a fresh key for data already spent.
    ``data_path`` is the location the node reads (its own, or a simulation's).
    """
    identity: dict[str, Any]
    if node_config.get("data-id"):
        identity = {"data-id": str(node_config["data-id"])}
    elif data_path:
        identity = {"data-path": _resolved(data_path)}
    else:
        identity = {"dataset": dataset}
        if node_config.get("data-dir"):
            identity["data-dir"] = _resolved(str(node_config["data-dir"]))
    if "partition-id" in node_config:
        identity["partition-id"] = int(node_config["partition-id"])
        identity["num-partitions"] = int(node_config.get("num-partitions", 0))
    return identity


def _resolved(path: str) -> str:
    return os.path.realpath(path) if os.path.exists(path) else path


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
            raise LedgerError(f"privacy ledger file {path} cannot be read: {error}") from error
        _check_document(document, path)
        return document

    def history(self, key: str) -> list[list[float]]:
        """Every DP-SGD step entry ``[sigma, q, steps]`` on ``key``'s data, oldest run first.

        Entries of format-1 files in the folder (written by an earlier fedmodel, keyed by
        run-config values, so no key of today finds them) are composed in first, whatever
        data they were for: over-counting is safe, restarting at ε = 0 is not.
        """
        return self._legacy_entries() + _all_entries(self.read(key))

    def _legacy_entries(self) -> list[list[float]]:
        entries: list[list[float]] = []
        for path in sorted(self.directory.glob("privacy-ledger-*.json")):
            try:
                document = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as error:
                raise LedgerError(f"privacy ledger file {path} cannot be read: {error}") from error
            if isinstance(document, dict) and document.get("format") == LEGACY_FORMAT:
                document["format"] = FORMAT_VERSION  # same layout; checked as such
                _check_document(document, path)
                entries += _all_entries(document)
        return entries

    def append(
        self,
        key: str,
        *,
        run_id: int,
        entries: list[list[float]] | list[tuple[float, float, int]],
        data: Mapping[str, Any],
        noise_source: str,
    ) -> list[list[float]]:
        """Append ``entries`` to run ``run_id``'s history; return every entry on the data.

        Append-only, under the lock: concurrent appends by two processes both land.
        """
        entries = [[float(s), float(q), int(n)] for s, q, n in entries]
        _check_history(entries, f"run {run_id}")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        with _locked(path.with_suffix(".lock")):
            document = self.read(key)
            now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            run = document["runs"].setdefault(
                str(run_id), {"history": [], "first-recorded": now, "noise-sources": []}
            )
            run["history"].extend(entries)
            run["last-recorded"] = now
            if noise_source not in run.setdefault("noise-sources", []):
                run["noise-sources"].append(noise_source)
            document["data"] = dict(data)
            write_atomically(path, json.dumps(document, indent=1) + "\n")
            return self._legacy_entries() + _all_entries(document)


def _all_entries(document: Mapping[str, Any]) -> list[list[float]]:
    runs = sorted(document["runs"].values(), key=lambda run: run["first-recorded"])
    return [list(entry) for run in runs for entry in run["history"]]


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    # O_NOFOLLOW: a symbolic link planted at the lock's name (by anyone who can write the
    # folder) must not make the node create or lock a file elsewhere; 0600: only the node.
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as error:
        raise LedgerError(
            f"privacy ledger lock {lock_path} cannot be opened ({error.strerror}); "
            "a symbolic link there is refused"
        ) from error
    with os.fdopen(fd, "r+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _check_document(document: Any, path: Path) -> None:
    if not isinstance(document, dict) or document.get("format") != FORMAT_VERSION:
        raise LedgerError(f"privacy ledger file {path} is not a format-{FORMAT_VERSION} ledger")
    runs = document.get("runs")
    if not isinstance(runs, dict):
        raise LedgerError(f"privacy ledger file {path} has no 'runs' table")
    for run_id, run in runs.items():
        if not isinstance(run, dict) or "history" not in run or "first-recorded" not in run:
            raise LedgerError(f"privacy ledger file {path}: run {run_id} is malformed")
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
        raise LedgerError(
            f"privacy ledger of {where}: history must be [sigma >= 0, 0 < q <= 1, steps >= 0] "
            "entries"
        )
