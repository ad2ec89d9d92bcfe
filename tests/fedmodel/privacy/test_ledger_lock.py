"""The ledger's lock file: created owner-only, never through a symbolic link."""

import stat

import pytest

from fedmodel.privacy.ledger_store import LedgerError, LedgerStore

DATA = {"dataset": "digits", "partition-id": 0}


def test_a_symlink_at_the_lock_path_is_refused_and_its_target_untouched(tmp_path):
    store = LedgerStore(tmp_path / "state")
    store.directory.mkdir()
    elsewhere = tmp_path / "elsewhere"
    lock = store.path("k").with_suffix(".lock")
    lock.symlink_to(elsewhere)
    with pytest.raises(LedgerError, match="lock .* cannot be opened"):
        store.append("k", run_id=1, entries=[[1.0, 0.1, 5]], data=DATA, noise_source="secure")
    assert not elsewhere.exists() and not store.path("k").exists()


def test_the_lock_file_is_private(tmp_path):
    store = LedgerStore(tmp_path / "state")
    store.append("k", run_id=1, entries=[[1.0, 0.1, 5]], data=DATA, noise_source="secure")
    lock = store.path("k").with_suffix(".lock")
    assert stat.S_IMODE(lock.lstat().st_mode) == 0o600
    assert store.history("k") == [[1.0, 0.1, 5]]
