"""RunFolder's metrics files: the whole history as json.dumps and csv write it."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, fields

from fedmodel.config import RunConfig
from fedmodel.results import RoundMetrics, RunFolder


def _round(n: int, **extra) -> RoundMetrics:
    values = dict(
        round=n,
        test_accuracy=0.5 + n / 100,
        test_loss=math.nan if n == 2 else 1.0 / n,
        epsilon_max=float(n),
        epsilon_mean=n / 2,
        clients_trained=10,
        clients_failed=0,
        train_loss=0.25,
        seconds=0.031,
    )
    return RoundMetrics(**{**values, **extra})


def _expected(rounds: list[RoundMetrics]) -> tuple[bytes, bytes]:
    rows = [asdict(r) for r in rounds]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[f.name for f in fields(RoundMetrics)])
    writer.writeheader()
    writer.writerows(rows)
    return (json.dumps(rows, indent=2) + "\n").encode(), buffer.getvalue().encode()


def _written(folder: RunFolder) -> tuple[bytes, bytes]:  # the bytes: CSV lines end in \r\n
    return (
        (folder.path / "metrics.json").read_bytes(),
        (folder.path / "metrics.csv").read_bytes(),
    )


def test_metrics_files_are_the_whole_history_after_every_round(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.create(RunConfig.from_mapping({}))
    assert _written(folder) == _expected([])
    for n in range(1, 5):
        folder.add_round(_round(n, user_epsilon=0.1 * n))
        assert _written(folder) == _expected(folder.rounds)
    assert (
        json.loads(_written(folder)[0])[1]["test_loss"]
        != json.loads(_written(folder)[0])[1]["test_loss"]
    )  # NaN, as json.dumps writes it


def test_a_restored_history_is_written_as_restored(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.create(RunConfig.from_mapping({}))
    folder.add_round(_round(1))
    folder.rounds = [_round(1, seconds=9.0), _round(2)]  # as a resumed run's recorder sets it
    folder.add_round(_round(3))
    assert _written(folder) == _expected(folder.rounds)
    assert json.loads(_written(folder)[0])[0]["seconds"] == 9.0


def test_round_rows_are_the_rounds_as_dicts(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.create(RunConfig.from_mapping({}))
    for n in (1, 2):
        folder.add_round(_round(n))
    assert folder.round_rows() == [asdict(r) for r in folder.rounds]
