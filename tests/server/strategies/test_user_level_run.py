"""A whole simulated run under user-level DP: the budget ends it cleanly, the folder is whole."""

import json
import math

import pytest

from fedmodel.results import load_metrics
from simulations.simulate import simulate

pytest.importorskip("dp_accounting")


@pytest.mark.slow
def test_max_epsilon_ends_the_run_before_a_round_would_exceed_it(tmp_path, capsys):
    # z = 1, 3 of 6 clients Poisson-sampled (q = 0.5): ε 3.89 after 1 round, 5.33 after 2.
    budget = 5.0
    run_dir = tmp_path / "run"
    simulate(
        {
            "num-server-rounds": 5,
            "dp": False,
            "privacy-unit": "user",
            "client-sampling": "poisson",
            "clients-per-round": 3,
            "max-epsilon": budget,
            "user-noise-multiplier": 1.0,
            "user-clipping-norm": 1.0,
            "run-dir": str(run_dir),
        },
        num_clients=6,
    )
    out = capsys.readouterr().out
    assert "Privacy budget reached, stopping before round 2" in out
    rounds = load_metrics(run_dir)
    assert [r.round for r in rounds] == [1]
    assert all(r.user_epsilon <= budget for r in rounds)
    assert rounds[0].user_epsilon == pytest.approx(3.8936, abs=1e-4)
    assert math.isinf(rounds[0].epsilon_max)  # no record-level DP: dp = false
    report = json.loads((run_dir / "privacy.json").read_text())
    assert report["units"] == ["user-level"] and report["rounds_run"] == 1
    assert report["user_level"]["rounds_composed"] == 1
    assert report["user_level"]["epsilon"] <= budget
    assert report["stopped"].startswith("stopping before round 2")
    assert (run_dir / "privacy.md").exists() and (run_dir / "model.pt").exists()
