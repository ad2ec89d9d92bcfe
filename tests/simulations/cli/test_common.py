"""The closing line every job command prints."""

import math
from pathlib import Path

import pytest

from fedmodel.results import RoundMetrics
from simulations.cli.common import print_done


def _final(test_accuracy: float, client_accuracy: float) -> RoundMetrics:
    return RoundMetrics(
        round=3,
        test_accuracy=test_accuracy,
        test_loss=0.5,
        epsilon_max=7.9997,
        epsilon_mean=7.9,
        clients_trained=3,
        clients_failed=0,
        train_loss=0.6,
        seconds=0.1,
        client_accuracy=client_accuracy,
    )


@pytest.mark.parametrize(
    ("test_accuracy", "client_accuracy", "expected"),
    [
        (0.91666, math.nan, "test accuracy 0.9167"),
        (math.nan, 0.93181, "client accuracy 0.9318 (no central test set)"),
        (math.nan, math.nan, "no evaluation (no central test set, and no client evaluated)"),
    ],
)
def test_done_line_names_the_accuracy_there_is(capsys, test_accuracy, client_accuracy, expected):
    final = _final(test_accuracy, client_accuracy)
    print_done(0.0, final, dp=True, run_id=7, run_dir=Path("runs/x"))
    line = capsys.readouterr().out
    assert line.startswith("done in ")
    assert line.endswith(f" s: run 7, {expected}, max client ε 8.000; run folder runs/x\n")
    print_done(0.0, final, dp=False)
    assert capsys.readouterr().out.endswith(f" s: {expected}, DP off\n")
