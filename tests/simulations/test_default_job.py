"""The README's default job reaches its published figures (accuracy, not time)."""

import json

from simulations import simulate


def test_default_private_job_reaches_88_percent_with_every_client_within_epsilon_8(tmp_path):
    result = simulate({"run-dir": str(tmp_path / "dp")})
    assert result.final.test_accuracy >= 0.88
    epsilons = [
        json.loads(p.read_text())["epsilon"] for p in (result.run_dir / "privacy").iterdir()
    ]
    assert len(epsilons) == 10 and max(epsilons) <= 8.0


def test_default_job_without_dp_reaches_95_percent(tmp_path):
    result = simulate({"dp": False, "run-dir": str(tmp_path / "plain")})
    assert result.final.test_accuracy >= 0.95
