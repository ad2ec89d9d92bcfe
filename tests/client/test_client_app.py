"""The ClientApp keeps its accountant across rounds, so ε is cumulative."""

import json

import pytest
from opacus.accountants import RDPAccountant

from fedmodel.config import RunConfig
from fedmodel.data import partition_sizes
from fedmodel.training import sample_rate_for
from simulations import simulate


def test_reported_epsilon_equals_a_fresh_accountant_over_the_whole_history(tmp_path):
    rounds, epochs, clients = 3, 2, 4
    values = {
        "num-server-rounds": rounds,
        "local-epochs": epochs,
        "noise-multiplier": 1.1,
        "target-epsilon": 0.0,
        "batch-size": 32,
        "run-dir": str(tmp_path / "run"),
    }
    result = simulate(values, num_clients=clients)
    sizes = partition_sizes(RunConfig.from_mapping(values), num_partitions=clients)
    for partition_id, size in enumerate(sizes):
        ledger = json.loads(
            (result.run_dir / "privacy" / f"partition-{partition_id}.json").read_text()
        )
        q = sample_rate_for(size, 32)
        total_steps = rounds * epochs * round(1 / q)  # Poisson batches per epoch = 1/q
        fresh = RDPAccountant()
        fresh.history = [(1.1, q, total_steps)]
        assert ledger["steps_total"] == total_steps
        assert ledger["epsilon"] == pytest.approx(fresh.get_epsilon(delta=1e-5), abs=1e-6)
    assert result.final.epsilon_max == pytest.approx(
        max(json.loads(p.read_text())["epsilon"] for p in (result.run_dir / "privacy").iterdir())
    )


def test_target_epsilon_is_calibrated_once_and_met_over_the_run(tmp_path):
    values = {"num-server-rounds": 3, "target-epsilon": 3.0, "run-dir": str(tmp_path / "run")}
    result = simulate(values, num_clients=3)
    sigmas = set()
    for path in (result.run_dir / "privacy").iterdir():
        ledger = json.loads(path.read_text())
        sigmas.update(entry[0] for entry in ledger["history"])
        assert 2.9 <= ledger["epsilon"] <= 3.0
    assert len(sigmas) == 1  # one noise multiplier for the whole run (equal-size clients)
    eps = [r.epsilon_max for r in result.rounds]
    assert eps == sorted(eps) and eps[-1] <= 3.0
