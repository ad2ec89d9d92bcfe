"""A node's ledgers on disk: one entry per run, composed; never shrunk, never reset."""

import json
import os

import pytest

from fedmodel.privacy.ledger_store import LedgerStore, data_key

DIGITS_0 = {"dataset": "digits", "partition-id": 0, "num-partitions": 2, "seed": 0}


def test_data_key_is_stable_readable_and_tells_data_apart():
    assert data_key(DIGITS_0) == data_key(dict(reversed(list(DIGITS_0.items()))))
    assert data_key(DIGITS_0).startswith("digits-")
    assert data_key(DIGITS_0) != data_key({**DIGITS_0, "partition-id": 1})
    assert data_key({"data-path": "/srv/data/hospital-a.npz"}).startswith("hospital-a.npz-")
    with pytest.raises(ValueError, match="at least one entry"):
        data_key({})


def test_each_run_keeps_its_own_entry_and_others_compose(tmp_path):
    store = LedgerStore(tmp_path / "state")
    key = data_key(DIGITS_0)
    assert store.prior_history(key, run_id=1) == []  # nothing yet, nothing created
    assert not (tmp_path / "state").exists()

    store.record_run(key, run_id=1, history=[[1.5, 0.05, 20]], data=DIGITS_0)
    store.record_run(key, run_id=1, history=[[1.5, 0.05, 40]], data=DIGITS_0)  # round 2
    store.record_run(key, run_id=2, history=[[1.1, 0.05, 20]], data=DIGITS_0)

    # Run 2 sees run 1's 40 steps once (its latest entry), not 20 + 40.
    assert store.prior_history(key, run_id=2) == [[1.5, 0.05, 40]]
    assert store.prior_history(key, run_id=1) == [[1.1, 0.05, 20]]
    assert store.prior_history(key, run_id=3) == [[1.5, 0.05, 40], [1.1, 0.05, 20]]
    document = json.loads(store.path(key).read_text())
    assert document["data"] == DIGITS_0 and set(document["runs"]) == {"1", "2"}
    assert [p.name for p in (tmp_path / "state").iterdir() if p.suffix == ".tmp"] == []


def test_a_run_cannot_shrink_its_stored_steps(tmp_path):
    store = LedgerStore(tmp_path)
    key = data_key(DIGITS_0)
    store.record_run(key, run_id=7, history=[[1.5, 0.05, 40]], data=DIGITS_0)
    with pytest.raises(ValueError, match="shrink its stored ledger .* from 40 to 20 steps"):
        store.record_run(key, run_id=7, history=[[1.5, 0.05, 20]], data=DIGITS_0)
    assert store.prior_history(key, run_id=8) == [[1.5, 0.05, 40]]


def test_an_unreadable_file_stops_rather_than_restarting_at_zero(tmp_path):
    store = LedgerStore(tmp_path)
    key = data_key(DIGITS_0)
    store.path(key).write_text("{not json")
    with pytest.raises(ValueError, match=f"privacy ledger file {store.path(key)} cannot be read"):
        store.prior_history(key, run_id=1)
    store.path(key).write_text(json.dumps({"format": 1, "runs": {"1": {"history": [[1, 2, 3]]}}}))
    with pytest.raises(ValueError, match="run 1 is malformed"):
        store.prior_history(key, run_id=2)


def test_bad_histories_and_keys_are_refused(tmp_path):
    store = LedgerStore(tmp_path)
    with pytest.raises(ValueError, match=r"0 < q <= 1"):
        store.record_run("k", run_id=1, history=[[1.0, 1.5, 3]], data=DIGITS_0)
    with pytest.raises(ValueError, match="not a plain file name"):
        store.path("../escape")
    assert os.listdir(tmp_path) == []
