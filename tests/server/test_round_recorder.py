"""RoundRecorder: each round's metrics, run folder and log lines, exactly as printed."""

import json

import pytest
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAvg

from fedmodel.config import RunConfig
from fedmodel.models import build_model
from fedmodel.results import RunFolder, load_metrics
from server.round_recorder import RoundRecorder
from server.strategies.client_tracking import ClientTracking


def _ledger(epsilon: float, node_id: int) -> dict:
    return {"epsilon": epsilon, "node_id": node_id, "noise_source": "secure"}


@pytest.fixture
def recorded(tmp_path, capsys):
    """A recorder over a strategy whose round 1 had 2 trained, 1 failed of 3 required."""
    config = RunConfig.from_mapping({"num-server-rounds": 12, "min-train-replies": 3})
    model = build_model("mlp", input_shape=(64,), num_classes=10, hidden_sizes=(8,))
    folder = RunFolder(tmp_path / "run")
    folder.create(config)
    strategy = ClientTracking(FedAvg(), require_ledger=True, min_train_replies=3)
    times = iter([10.0, 11.0, 13.5, 14.0])  # start, after round 0, round 1 measured, after
    recorder = RoundRecorder(
        config, model=model, test=None, strategy=strategy, folder=folder, clock=lambda: next(times)
    )
    arrays = ArrayRecord(model.state_dict())
    recorder(0, arrays)  # the initial model: evaluated, not recorded
    strategy.ledgers = {"site-a": _ledger(2.0, 7), "site-b": _ledger(1.0, 8)}
    strategy.last_round_epsilons = {"site-b": 1.0, "site-a": 2.0}
    strategy.last_round_failures = ["node 9: no reply within 30 s (crashed or too slow)"]
    strategy.last_round_trained, strategy.last_round_updated = 2, False
    reply = recorder(1, arrays)
    return recorder, folder, reply, capsys.readouterr().out.splitlines()


def test_the_round_is_printed_line_by_line(recorded):
    assert recorded[3] == [
        "round  1/12 | test acc nan | test loss nan | ε max 2.000 mean 1.500 | 2 clients "
        "| 1 failed | 2.50 s",
        "  noise and sampling drawn per node from: secure x2",
        "  ε by client: site-a (node 7) 2.000, site-b (node 8) 1.000",
        "  failed: node 9: no reply within 30 s (crashed or too slow)",
        "  global model unchanged: 2 of at least 3 updates (run-config min-train-replies)",
    ]


def test_the_round_is_written_and_ledgers_only_when_new(recorded):
    recorder, folder, reply, _ = recorded
    (metrics,) = load_metrics(folder.path)
    assert (metrics.round, metrics.clients_trained, metrics.clients_failed) == (1, 2, 1)
    assert metrics.seconds == 2.5 and recorder.round_started == 14.0
    assert set(reply.keys()) == {"test-loss", "test-accuracy"}
    assert (folder.path / "model.pt").is_file()
    ledger = folder.path / "privacy" / "site-a.json"
    assert json.loads(ledger.read_text())["epsilon"] == 2.0
    ledger.unlink()
    recorder.clock = lambda: 20.0
    recorder.write(metrics, ArrayRecord(recorder.model.state_dict()))
    assert not ledger.exists()  # the same ledger object: not written again
