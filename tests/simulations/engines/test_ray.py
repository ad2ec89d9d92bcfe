"""Flower's Ray simulation engine runs the same apps and gives the in-process results.

Starts a SuperLink on a free loopback port and a private Ray instance (about 30 s on
two idle cores): the one test here is worth it, since it is the only check that the
apps run unchanged on Flower's own simulation runtime.
"""

import json
import os
import subprocess

import pytest
import torch

from fedmodel.config import ConfigError
from simulations import simulate
from simulations.engines.ray import simulate_on_ray

CONFIG = {"num-server-rounds": 2, "learning-rate": 1.0, "batch-size": 32, "seed": 3}


def _descendants(pid):
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,comm="], capture_output=True, text=True).stdout
    children = {}
    for line in out.splitlines():
        child, parent, name = line.split(None, 2)
        if name.strip() != "ps":  # the ps above
            children.setdefault(int(parent), []).append(int(child))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ray_engine_matches_the_in_process_engine_and_leaves_nothing_running(tmp_path):
    ray = simulate_on_ray(
        {**CONFIG, "run-dir": str(tmp_path / "ray")}, num_clients=2, workers=2, timeout=500
    )
    local = simulate({**CONFIG, "run-dir": str(tmp_path / "local")}, num_clients=2)
    assert len(ray.rounds) == 2 and ray.final.clients_trained == 2
    ray_weights = torch.load(ray.run_dir / "model.pt")
    local_weights = torch.load(local.run_dir / "model.pt")
    # Same seeds, same partitions, one torch thread: FedAvg over two clients is exact.
    assert all(torch.equal(ray_weights[k], local_weights[k]) for k in ray_weights)
    assert ray.final.test_accuracy == local.final.test_accuracy
    assert ray.final.epsilon_max == local.final.epsilon_max > 0
    ledger = json.loads((ray.run_dir / "privacy" / "partition-0.json").read_text())
    assert ledger["steps_total"] == json.loads(
        (local.run_dir / "privacy" / "partition-0.json").read_text()
    )["steps_total"]
    assert _descendants(os.getpid()) == []  # SuperLink, flwr-simulation, Ray: all gone


def test_ray_engine_validates_before_starting_anything(tmp_path):
    with pytest.raises(ConfigError, match="'delta' = 0.5 is out of range"):
        simulate_on_ray({"delta": 0.5, "run-dir": str(tmp_path / "run")}, num_clients=2)
    assert not (tmp_path / "run").exists()
