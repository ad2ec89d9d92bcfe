"""The data check before round 1, on a real deployment: each node names its own data file.

Flower's SuperLink and SuperNodes run as separate processes (``LocalFederation`` stops
every one it started, however the test ends). One node's data holds a NaN: the server's
data query reports that node by id with the error, leaves it out, and the run trains on
the other.
"""

import numpy as np
import pytest

from fedmodel.results import load_metrics
from server.deployment.local_federation import LocalFederation
from simulations.examples.custom_data import digits


@pytest.mark.slow  # real Flower processes
def test_nodes_read_their_own_data_and_a_bad_node_is_reported_and_left_out(tmp_path):
    train, test = digits()
    x, y = (t.numpy() for t in train.tensors)
    np.savez(tmp_path / "good.npz", x=x[::2], y=y[::2])
    bad = x[1::2].copy()
    bad[5, 0, 3, 3] = np.nan
    np.savez(tmp_path / "bad.npz", x=bad, y=y[1::2])
    np.savez(tmp_path / "test.npz", x=test.tensors[0].numpy(), y=test.tensors[1].numpy())
    node_configs = [{"data-path": str(tmp_path / name)} for name in ("good.npz", "bad.npz")]
    run_dir = tmp_path / "run"
    with LocalFederation(tmp_path / "fed", num_nodes=2, node_configs=node_configs) as federation:
        bad_node = federation.wait_for_node(1)
        outcome = federation.submit(
            {
                "dataset": "custom",
                "num-classes": 10,
                "test-data": str(tmp_path / "test.npz"),
                "num-server-rounds": 1,
                "run-dir": str(run_dir),
            },
            timeout=240,
        )
    assert outcome.succeeded, outcome.log[-3000:]
    # Under DP a node reports ceil(N / 64) * 64 = 768 for its 719 records (public).
    assert "Data check: 1 of 2 nodes ready, input shape (1, 8, 8), 10 classes, 768" in outcome.log
    assert (
        f"excluded node {bad_node}: DataError: {tmp_path / 'bad.npz'}['x']: example 5 holds "
        "a non-finite value" in outcome.log
    )
    assert "holds nan" not in outcome.log.split("Data check")[1]  # the value stays on the node
    (metrics,) = load_metrics(run_dir)
    assert metrics.clients_trained == 1 and metrics.test_accuracy > 0.25  # secure noise: varies
