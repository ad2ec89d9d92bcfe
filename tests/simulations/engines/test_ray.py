"""Flower's Ray simulation engine runs the same apps and gives the in-process results.

Starts a SuperLink on a free loopback port and a private Ray instance (about 30 s on
two idle cores): the one test here is worth it, since it is the only check that the
apps run unchanged on Flower's own simulation runtime.
"""

import json
import os
import subprocess
from pathlib import Path

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
    assert (
        ledger["steps_total"]
        == json.loads((local.run_dir / "privacy" / "partition-0.json").read_text())["steps_total"]
    )
    assert _descendants(os.getpid()) == []  # SuperLink, flwr-simulation, Ray: all gone


def test_ray_engine_validates_before_starting_anything(tmp_path):
    with pytest.raises(ConfigError, match="'delta' = 0.5 is out of range"):
        simulate_on_ray({"delta": 0.5, "run-dir": str(tmp_path / "run")}, num_clients=2)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("gpus", [-0.5, 1.5, float("nan")])
def test_a_gpu_share_ray_cannot_schedule_is_refused_before_anything_starts(tmp_path, gpus):
    with pytest.raises(ConfigError, match=r"--gpus-per-client = .* is out of range: must be 0"):
        simulate_on_ray({"run-dir": str(tmp_path / "run")}, num_clients=2, gpus_per_client=gpus)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_gpus_per_client_without_a_gpu_or_outside_ray_is_refused_not_left_waiting(tmp_path):
    run = {"run-dir": str(tmp_path / "run")}
    # A local Ray instance without GPUs would never schedule an actor that needs one.
    with pytest.raises(ConfigError, match="has no CUDA device for the local Ray instance"):
        simulate_on_ray(run, num_clients=2, gpus_per_client=0.25)
    with pytest.raises(ConfigError, match="--gpus-per-client = 0.5 is for the Ray engine"):
        simulate(run, num_clients=2, gpus_per_client=0.5)
    assert not (tmp_path / "run").exists()


def test_the_cli_hands_gpus_per_client_to_the_engine_choice(tmp_path, capsys):
    from simulations.cli import main

    argv = ["simulate", "--gpus-per-client", "0.5", "--run-dir", str(tmp_path / "run")]
    assert main([*argv, "--no-plots", "--no-progress"]) == 2
    assert "--gpus-per-client = 0.5 is for the Ray engine" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_experiment_file_does_not_silently_drop_gpus_per_client(tmp_path, capsys):
    from simulations.cli import main

    sweep = Path(__file__).resolve().parents[3] / "simulations/examples/digits-epsilon-sweep.toml"
    argv = ["simulate", "--config", str(sweep)]
    assert main([*argv, "--gpus-per-client", "1", "--dry-run"]) == 2
    assert "--gpus-per-client applies to a single run" in capsys.readouterr().err
