"""RunFolder.batch: the round's files written together, each atomically."""

from __future__ import annotations

import json

import pytest
import torch

from fedmodel.results import RunFolder


def test_writes_inside_a_batch_land_when_it_ends(tmp_path):
    folder = RunFolder(tmp_path / "run")
    (folder.path / "privacy").mkdir(parents=True)
    with folder.batch():
        for i in range(5):
            folder.save_ledger(f"partition-{i}", {"epsilon": float(i)})
        folder.save_model({"w": torch.ones(2)})
        assert not (folder.path / "model.pt").exists()  # held until the batch ends
    assert json.loads((folder.path / "privacy" / "partition-3.json").read_text()) == {
        "epsilon": 3.0
    }
    assert torch.equal(torch.load(folder.path / "model.pt")["w"], torch.ones(2))
    leftovers = [p.name for p in folder.path.rglob(".*.tmp")]
    assert leftovers == []


def test_a_failed_write_replaces_nothing_and_leaves_no_temporary_file(tmp_path):
    folder = RunFolder(tmp_path / "run")
    (folder.path / "privacy").mkdir(parents=True)
    folder.save_ledger("a", {"epsilon": 1.0})
    with pytest.raises(OSError), folder.batch():
        folder.save_ledger("a", {"epsilon": 2.0})
        folder.save_ledger("b", {"epsilon": 2.0})
        folder._write(folder.path / "missing-folder" / "x.json", "{}")  # noqa: SLF001
    assert json.loads((folder.path / "privacy" / "a.json").read_text()) == {"epsilon": 1.0}
    assert not (folder.path / "privacy" / "b.json").exists()
    assert [p.name for p in folder.path.rglob(".*.tmp")] == []
