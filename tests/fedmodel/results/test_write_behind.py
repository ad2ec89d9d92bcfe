"""fedmodel.results.write_behind: the run's files written in order, off the run's thread.

What a user relies on: when a run returns or raises, every file is on disk, complete;
at any instant the folder is one the run had at some earlier point (writes land in the
order they were made, nothing partial, nothing after a failed write); and what is on
disk is what the run had when it wrote it, not what it changed to afterwards.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from fedmodel.results import RunFolder
from fedmodel.results.checkpoint import (
    load_client_states,
    read_state_file,
    save_client_states,
    write_state_file,
)
from fedmodel.results.write_behind import (
    WriteBehindError,
    write_behind,
    write_later,
)


def test_writes_run_in_order_off_the_calling_thread_and_are_done_when_the_block_ends():
    done: list[tuple[int, str]] = []
    release = threading.Event()

    def job(i: int):
        def run():
            if i == 0:
                release.wait(5)  # the run goes on while the first write waits
            done.append((i, threading.current_thread().name))

        return run

    with write_behind():
        for i in range(40):  # more than MAX_PENDING: the run waits, nothing is dropped
            if i == 1:
                assert done == []
                release.set()
            write_later(job(i))
    assert [i for i, _ in done] == list(range(40))
    assert {name for _, name in done} == {"fedmodel-write-behind"}


def test_outside_a_block_a_write_happens_at_once():
    done = []
    write_later(lambda: done.append(threading.current_thread().name))
    assert done == [threading.current_thread().name]


def test_a_failed_write_stops_the_later_ones_and_raises_in_the_run():
    done = []

    def fail():
        raise OSError(28, "No space left on device")

    with pytest.raises(WriteBehindError, match="No space left on device"):
        with write_behind():
            write_later(lambda: done.append(1))
            write_later(fail)
            write_later(lambda: done.append(3))  # after the failure: not written
    assert done == [1]


def test_a_failed_write_is_raised_at_the_next_write_handed_over():
    with pytest.raises(WriteBehindError):
        with write_behind():
            write_later(lambda: 1 / 0)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                write_later(lambda: None)  # raises once the failure is known
                time.sleep(0.01)


def test_when_the_run_raises_its_writes_are_finished_first(tmp_path):
    folder = RunFolder(tmp_path / "run")
    (folder.path / "privacy").mkdir(parents=True)
    with pytest.raises(KeyError):
        with write_behind():
            with folder.batch():
                folder.save_ledger("partition-0", {"epsilon": 1.0})
                folder.save_model({"w": torch.ones(3)})
            raise KeyError("crash")
    assert json.loads((folder.path / "privacy" / "partition-0.json").read_text()) == {
        "epsilon": 1.0
    }
    assert torch.equal(torch.load(folder.path / "model.pt")["w"], torch.ones(3))
    assert [p.name for p in folder.path.rglob(".*.tmp")] == []


def test_a_write_failure_during_a_failing_run_is_a_note_on_the_runs_error():
    with pytest.raises(KeyError) as raised:
        with write_behind():
            write_later(lambda: 1 / 0)
            raise KeyError("crash")
    assert any("ZeroDivisionError" in note for note in raised.value.__notes__)


def test_the_run_folder_is_the_same_written_behind_as_written_at_once(tmp_path):
    def write(folder: RunFolder) -> None:
        (folder.path / "privacy").mkdir(parents=True)
        for round_ in range(3):
            with folder.batch():
                folder.save_ledger("partition-0", {"round": round_})
                folder.save_model({"w": torch.full((2,), float(round_))})
            folder.save_ledger("partition-0", {"round": round_, "final": True})  # after it

    at_once, behind = RunFolder(tmp_path / "a"), RunFolder(tmp_path / "b")
    write(at_once)
    with write_behind():
        write(behind)
    for name in ("model.pt", "privacy/partition-0.json"):
        assert (behind.path / name).read_bytes() == (at_once.path / name).read_bytes()
    ledger = json.loads((behind.path / "privacy" / "partition-0.json").read_text())
    assert ledger == {"round": 2, "final": True}


def test_a_checkpoint_holds_the_state_it_was_given_not_what_it_became(tmp_path):
    weights = torch.zeros(4)
    state = {"model": {"w": weights}, "history": [1, 2]}
    release = threading.Event()
    with write_behind():
        write_later(lambda: release.wait(5))  # the write below waits behind this one
        write_state_file(tmp_path / "server.pt", "server", state)
        weights += 7  # the run goes on changing its state
        state["history"].append(3)
        release.set()
    saved = read_state_file(tmp_path / "server.pt", "server")
    assert torch.equal(saved["model"]["w"], torch.zeros(4)) and saved["history"] == [1, 2]


def test_clients_files_keep_their_order_written_behind(tmp_path):
    with write_behind():
        for round_ in (1, 2, 3):
            save_client_states(
                tmp_path, server_round=round_, nodes={1001: {"state": b"%d" % round_}}
            )
    assert load_client_states(tmp_path, server_round=3)[1001]["state"] == b"3"
    assert load_client_states(tmp_path, server_round=2)[1001]["state"] == b"2"  # previous
    with pytest.raises(Exception, match="round 1"):
        load_client_states(tmp_path, server_round=1)


def test_nested_blocks_share_the_outer_thread():
    order = []
    with write_behind() as outer:
        with write_behind() as inner:
            assert inner is outer
            write_later(lambda: order.append("inner"))
        write_later(lambda: order.append("outer"))
    assert order == ["inner", "outer"]
