"""End to end: the unchanged ServerApp and ClientApp, run in-process."""

import json

import pytest
import torch

from fedmodel.config import ConfigError
from fedmodel.data import load_dataset
from fedmodel.models import build_model
from fedmodel.training import evaluate
from simulations import simulate

SMALL = {"num-server-rounds": 2, "learning-rate": 1.0}


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "dp"
    return simulate({**SMALL, "run-dir": str(run_dir)}, num_clients=3)


def test_dp_run_learns_well_above_chance(dp_run):
    assert len(dp_run.rounds) == 2
    assert dp_run.final.test_accuracy > 0.6  # chance is 0.1
    assert 0 < dp_run.rounds[0].epsilon_max <= dp_run.final.epsilon_max


def test_run_folder_is_complete(dp_run):
    names = {p.name for p in dp_run.run_dir.iterdir()}
    assert {"config.json", "metrics.json", "metrics.csv", "model.pt", "privacy"} <= names
    config = json.loads((dp_run.run_dir / "config.json").read_text())
    assert config["run_config"]["num-server-rounds"] == 2 and config["num_nodes"] == 3
    csv_lines = (dp_run.run_dir / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("round,test_accuracy,test_loss,epsilon_max")
    assert len(csv_lines) == 3
    ledgers = sorted((dp_run.run_dir / "privacy").glob("*.json"))
    assert [p.stem for p in ledgers] == ["partition-0", "partition-1", "partition-2"]
    ledger = json.loads(ledgers[0].read_text())
    assert ledger["accountant"] == "rdp" and ledger["delta"] == 1e-5
    assert ledger["epsilon"] == pytest.approx(dp_run.final.epsilon_max, rel=0.05)


def test_saved_model_reloads_and_reproduces_the_reported_accuracy(dp_run):
    splits = load_dataset("digits", seed=0)
    model = build_model("mlp", input_shape=splits.input_shape, num_classes=10)
    model.load_state_dict(torch.load(dp_run.run_dir / "model.pt"))
    loss, accuracy = evaluate(model, splits.test)
    assert accuracy == dp_run.final.test_accuracy
    assert loss == pytest.approx(dp_run.final.test_loss)


def test_non_private_run_reports_infinite_epsilon_and_no_ledgers(tmp_path):
    result = simulate({**SMALL, "dp": False, "run-dir": str(tmp_path / "run")}, num_clients=3)
    assert result.final.epsilon_max == float("inf")
    assert list((tmp_path / "run" / "privacy").iterdir()) == []


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"num-server-rounds": 0}, "'num-server-rounds' = 0 is out of range: must be >= 1"),
        ({"model": "transformer"}, "'model' = 'transformer' is not known"),
        (
            {"delta": 0.01},
            "'delta' = 0.01 is out of range for the smallest client: must be below 1/143",
        ),
    ],
)
def test_invalid_config_fails_with_named_error_and_leaves_no_run_folder(tmp_path, config, message):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        simulate({**config, "run-dir": str(run_dir)}, num_clients=10)
    assert not run_dir.exists()
