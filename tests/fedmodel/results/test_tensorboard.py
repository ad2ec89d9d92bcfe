"""Run-config ``tensorboard = true``: event files TensorBoard's own reader loads."""

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedmodel.results.tensorboard import EPSILON_HISTOGRAM_TAG
from simulations import simulate

SMALL = {"num-server-rounds": 2}
EXPECTED = {
    "test/accuracy",
    "test/loss",
    "privacy/epsilon_max",
    "privacy/epsilon_mean",
    "clients/trained",
    "clients/failed",
    "clients/rejected",
    "time/seconds_per_round",
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    on = simulate({**SMALL, "run-dir": str(root / "on"), "tensorboard": True}, num_clients=3)
    off = simulate({**SMALL, "run-dir": str(root / "off")}, num_clients=3)
    return on, off


def test_event_files_hold_every_round(runs):
    on, _ = runs
    events = EventAccumulator(str(on.run_dir / "tensorboard"), size_guidance={"histograms": 0})
    events.Reload()
    tags = events.Tags()
    assert EXPECTED <= set(tags["scalars"])
    for tag in EXPECTED:
        assert [e.step for e in events.Scalars(tag)] == [1, 2], tag
    epsilons = [e.value for e in events.Scalars("privacy/epsilon_max")]
    assert epsilons == pytest.approx([r.epsilon_max for r in on.rounds], rel=1e-6)
    accuracy = [e.value for e in events.Scalars("test/accuracy")]
    assert accuracy == pytest.approx([r.test_accuracy for r in on.rounds], rel=1e-6)
    assert [e.value for e in events.Scalars("clients/trained")] == [3, 3]
    assert EPSILON_HISTOGRAM_TAG in tags["histograms"]
    histogram = events.Histograms(EPSILON_HISTOGRAM_TAG)
    assert [h.step for h in histogram] == [1, 2] and histogram[-1].histogram_value.num == 3


def test_the_default_writes_no_event_files(runs):
    _, off = runs
    assert not (off.run_dir / "tensorboard").exists()
    assert not list(off.run_dir.rglob("events.out.tfevents.*"))
