"""A node's ledgers on disk: append-only, keyed by the node, never shrunk, never reset."""

import json
import os
import subprocess
import sys

import pytest

from fedmodel.privacy.ledger_store import LedgerStore, data_identity, data_key

DIGITS_0 = {"dataset": "digits", "partition-id": 0, "num-partitions": 2}


def test_data_key_is_stable_readable_and_tells_data_apart():
    assert data_key(DIGITS_0) == data_key(dict(reversed(list(DIGITS_0.items()))))
    assert data_key(DIGITS_0).startswith("digits-")
    assert data_key(DIGITS_0) != data_key({**DIGITS_0, "partition-id": 1})
    assert data_key({"data-path": "/srv/data/hospital-a.npz"}).startswith("hospital-a.npz-")
    with pytest.raises(ValueError, match="at least one entry"):
        data_key({})


def test_the_key_is_the_nodes_choice_not_the_run_configs(tmp_path):
    data = tmp_path / "site.npz"
    data.write_bytes(b"x")
    link = tmp_path / "link.npz"
    link.symlink_to(data)
    node = {"partition-id": 0, "num-partitions": 2}
    # A symlink or a relative spelling is the same data.
    assert data_identity({}, dataset="custom", data_path=str(link)) == data_identity(
        {}, dataset="custom", data_path=str(data)
    )
    # Built-in data: the node's partition, whatever seed or partitioner the run asks for.
    assert data_identity(node, dataset="digits") == {"dataset": "digits", **node}
    assert data_identity({"data-id": "ward-7", **node}, dataset="digits")["data-id"] == "ward-7"


def test_runs_append_and_every_entry_composes(tmp_path):
    store = LedgerStore(tmp_path / "state")
    key = data_key(DIGITS_0)
    assert store.history(key) == []  # nothing yet, nothing created
    assert not (tmp_path / "state").exists()

    store.append(key, run_id=1, entries=[[1.5, 0.05, 20]], data=DIGITS_0, noise_source="secure")
    store.append(key, run_id=1, entries=[[1.5, 0.05, 20]], data=DIGITS_0, noise_source="secure")
    everything = store.append(
        key, run_id=2, entries=[[1.1, 0.05, 20]], data=DIGITS_0, noise_source="seeded"
    )
    assert everything == [[1.5, 0.05, 20], [1.5, 0.05, 20], [1.1, 0.05, 20]]
    # A reused run id continues its history: it cannot replace it.
    store.append(key, run_id=1, entries=[[5.0, 0.05, 20]], data=DIGITS_0, noise_source="secure")
    assert sum(n for *_, n in store.history(key)) == 80
    document = json.loads(store.path(key).read_text())
    assert document["runs"]["1"]["noise-sources"] == ["secure"]
    assert [p.name for p in (tmp_path / "state").iterdir() if p.suffix == ".tmp"] == []


APPEND_MANY = """
import sys
from fedmodel.privacy.ledger_store import LedgerStore
store = LedgerStore(sys.argv[1])
for _ in range(20):
    store.append(sys.argv[2], run_id=int(sys.argv[3]), entries=[[1.0, 0.1, 1]],
                 data={"dataset": "digits"}, noise_source="seeded")
"""


def test_concurrent_processes_lose_no_step(tmp_path):
    key = data_key(DIGITS_0)
    workers = [
        subprocess.Popen([sys.executable, "-c", APPEND_MANY, str(tmp_path), key, str(worker)])
        for worker in range(3)
    ]
    assert [worker.wait(timeout=60) for worker in workers] == [0, 0, 0]
    assert sum(n for *_, n in LedgerStore(tmp_path).history(key)) == 60


def test_an_unreadable_file_stops_rather_than_restarting_at_zero(tmp_path):
    store = LedgerStore(tmp_path)
    key = data_key(DIGITS_0)
    store.path(key).write_text("{not json")
    with pytest.raises(ValueError, match=f"privacy ledger file {store.path(key)} cannot be read"):
        store.history(key)
    store.path(key).write_text(json.dumps({"format": 2, "runs": {"1": {"history": [[1, 2, 3]]}}}))
    with pytest.raises(ValueError, match="run 1 is malformed"):
        store.history(key)


def test_bad_histories_and_keys_are_refused(tmp_path):
    store = LedgerStore(tmp_path)
    with pytest.raises(ValueError, match=r"0 < q <= 1"):
        store.append("k", run_id=1, entries=[[1.0, 1.5, 3]], data=DIGITS_0, noise_source="s")
    with pytest.raises(ValueError, match="not a plain file name"):
        store.path("../escape")
    assert os.listdir(tmp_path) == []


def test_ledgers_of_the_earlier_format_are_composed_in_not_forgotten(tmp_path):
    legacy = {
        "format": 1,
        "data": {"dataset": "digits", "seed": 0},
        "runs": {"3": {"history": [[1.5, 0.05, 40]], "first-recorded": "2026-11-28T10:00:00"}},
    }
    (tmp_path / "privacy-ledger-digits-0123456789abcdef.json").write_text(json.dumps(legacy))
    store = LedgerStore(tmp_path)
    key = data_key(DIGITS_0)
    assert store.history(key) == [[1.5, 0.05, 40]]
    after = store.append(key, run_id=4, entries=[[1.5, 0.05, 20]], data=DIGITS_0,
                         noise_source="secure")
    assert after == [[1.5, 0.05, 40], [1.5, 0.05, 20]]
