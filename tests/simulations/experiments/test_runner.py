"""Running an experiment: each run in its folder, the summary matches the runs, failures."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

from simulations.cli import main
from simulations.experiments.runner import run_experiment
from simulations.experiments.spec import load_experiment


def write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def read_summary(folder: Path) -> list[dict[str, str]]:
    with open(folder / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_grid_runs_each_in_its_folder_and_summary_matches_the_runs(tmp_path):
    path = write(
        tmp_path,
        """
[experiment]
name = "tiny"
clients = 4
clients-per-round = 3
target-accuracy = 0.2
[run-config]
num-server-rounds = 2
dp = [true, false]
noise-multiplier = 1.5
target-epsilon = 0
batch-size = 32
learning-rate = 0.5
""",
    )
    experiment = load_experiment(path)
    out = io.StringIO()
    result = run_experiment(experiment, directory=tmp_path / "exp", progress=False, out=out)
    folder = tmp_path / "exp"
    assert result.directory == folder and not result.failed
    rows = read_summary(folder)
    assert [(r["run"], r["status"]) for r in rows] == [
        ("001_dp=true", "ok"),
        ("002_dp=false", "ok"),
    ]
    plan = json.loads((folder / "plan.json").read_text())
    assert [run["run_config"]["dp"] for run in plan["runs"]] == [True, False]
    assert (folder / "experiment.toml").read_text() == path.read_text()

    for row in rows:
        run_dir = folder / row["run"]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert [m["clients_trained"] for m in metrics] == [3, 3]  # clients-per-round
        assert float(row["final_accuracy"]) == metrics[-1]["test_accuracy"]
        assert float(row["best_accuracy"]) == max(m["test_accuracy"] for m in metrics)
        assert float(row["final_accuracy"]) > 0.2  # well above chance (0.1) after 2 rounds
        assert row["rounds_to_target"] in ("1", "2")
        assert float(row["wall_seconds"]) > 0
        assert (run_dir / "rounds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    dp_row, plain_row = rows
    # ε: each client's ledger equals an independent RDP computation of its own steps,
    # and the summary's max ε is the largest of them.
    epsilons = []
    for ledger_file in (folder / dp_row["run"] / "privacy").glob("*.json"):
        ledger = json.loads(ledger_file.read_text())
        accountant = RDPAccountant()
        accountant.history = [(1.5, 1 / 12, ledger["steps_total"])]  # 359 or 360 records, B=32
        assert ledger["epsilon"] == pytest.approx(accountant.get_epsilon(delta=1e-5), rel=1e-9)
        epsilons.append(ledger["epsilon"])
    assert float(dp_row["epsilon_max"]) == pytest.approx(max(epsilons), rel=1e-12)
    assert (dp_row["delta"], dp_row["accountant"]) == ("1e-05", "RDP")
    assert math.isinf(float(plain_row["epsilon_max"])) and plain_row["delta"] == ""

    markdown = (folder / "summary.md").read_text()
    assert "| 001_dp=true | true | ok |" in markdown
    assert "∞ (DP off)" in markdown and "rounds to 0.2" in markdown
    for name in ("frontier.png", "accuracy.png"):
        assert (folder / name).stat().st_size > 10_000
    assert "2/2 runs ok" in out.getvalue()


def test_a_failing_run_is_recorded_and_the_others_still_run(tmp_path, capsys):
    path = write(
        tmp_path,
        "[experiment]\nclients = 3\n[run-config]\nnum-server-rounds = 1\nseed = [0, 1]\n"
        "batch-size = 32\nlearning-rate = 0.5\ntarget-epsilon = 0\n",
    )
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "001_seed=0").write_text("a file where run 1's folder must go")

    code = main(
        ["simulate", "--config", str(path), "--run-dir", str(folder), "--no-plots", "--no-progress"]
    )
    assert code == 1
    rows = read_summary(folder)
    assert [r["status"] for r in rows] == ["failed", "ok"]
    assert rows[0]["error"] and rows[0]["rounds"] == "0"
    assert float(rows[1]["final_accuracy"]) > 0.2
    assert "001_seed=0" in (folder / "summary.md").read_text().split("## Failed runs")[1]
    assert "1/2 runs ok" in capsys.readouterr().out
