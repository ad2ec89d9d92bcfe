"""write_atomically / write_all_atomically: whole files or none, no temporary left."""

from __future__ import annotations

import os
import stat

import pytest

from fedmodel.atomic_files import write_all_atomically, write_atomically


def test_a_file_is_replaced_whole_and_private(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    write_atomically(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600  # as tempfile made them
    write_atomically(target, b"\x00" * 3_000_000)  # larger than one os.write may take
    assert target.read_bytes() == b"\x00" * 3_000_000
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_failure_renames_nothing_and_leaves_no_temporary_file(tmp_path):
    (tmp_path / "a").write_text("kept")
    files = {tmp_path / "a": "replaced?", tmp_path / "missing" / "b": "x"}
    with pytest.raises(FileNotFoundError):
        write_all_atomically(files)
    assert (tmp_path / "a").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
