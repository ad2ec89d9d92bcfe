"""A two-node Ray cluster on loopback, run as README's "A multi-machine Ray cluster" says.

A head (``ray start --head --num-cpus 1``) and a second node (``ray start --address ...
--num-cpus 1``) stand in for two machines; ``RAY_ADDRESS`` makes ``--engine ray`` join
them. Each node has one CPU and a client actor takes one, so Flower keeps one actor per
node. While the run trains, the test watches the actor processes: a Ray actor retitles
its process ``ray::ClientAppActor.run`` while it runs a client's message, and a Ray
worker is a child of its node's raylet, so the raylet above each busy actor names the
node that trained. Ray's own ``ray stop`` is not used: it stops every Ray process of
the machine by name (other users' and other tests' clusters too). The test stops what
its two ``ray start`` left running by PID instead, found by a marker in their environment.

It takes 45-60 s on two idle cores (two Ray nodes, a SuperLink, actors importing torch)
and over 2 minutes on loaded ones, past what CI's slow tests may spend; so it runs only
when ``FEDMODEL_TEST_RAY_CLUSTER=1`` is set::

    FEDMODEL_TEST_RAY_CLUSTER=1 pytest tests/simulations/engines/test_ray_cluster.py
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from fedmodel.privacy.node_policy import SIMULATED_NODES_ENV
from server.deployment.flower_processes import LOOPBACK, free_port
from simulations.engines.ray import simulate_on_ray

RAY = str(Path(sys.executable).parent / "ray")
MARKER = "FEDMODEL_TEST_RAY_CLUSTER"
CONFIG = {"num-server-rounds": 2, "batch-size": 32, "seed": 3}


def _marked(token: str) -> dict[int, tuple[int, str]]:
    """``pid -> (ppid, command line)`` of every process whose environment has the marker."""
    found = {}
    wanted = f"{MARKER}={token}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if wanted not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
        found[int(entry.name)] = (ppid, command)
    return found


def _stop(token: str, *, timeout: float = 5.0) -> None:
    """SIGTERM every marked process, SIGKILL what is left after ``timeout`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _marked(token):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while _marked(token) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not _marked(token):
            return


class _Watch(threading.Thread):
    """Every 50 ms: which raylet's child is running ``ClientAppActor.run`` right now."""

    def __init__(self, token: str) -> None:
        super().__init__(daemon=True)
        self.token, self.done = token, threading.Event()
        self.busy: set[tuple[int, int]] = set()  # (actor pid, its raylet's pid)

    def run(self) -> None:
        while not self.done.is_set():
            for pid, (ppid, command) in _marked(self.token).items():
                if command.startswith("ray::ClientAppActor.run"):
                    self.busy.add((pid, ppid))
            time.sleep(0.05)


def _ray_start(args: list[str], *, env: dict[str, str]) -> None:
    done = subprocess.run(
        [RAY, "start", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("FEDMODEL_TEST_RAY_CLUSTER") != "1",
    reason="starts a two-node Ray cluster (45 s to 2 min): set FEDMODEL_TEST_RAY_CLUSTER=1",
)
@pytest.mark.timeout(400)
def test_a_head_and_a_second_ray_node_both_train_clients_and_stop_by_pid(tmp_path, monkeypatch):
    token = uuid.uuid4().hex
    env = {
        **os.environ,
        MARKER: token,
        # What README's recipe sets on every machine: Ray's workers inherit the environment
        # of `ray start`, not of the SuperLink, so without it every node acts deployed.
        SIMULATED_NODES_ENV: "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    # Short: Ray puts unix sockets under it (108-byte limit); private: not /tmp/ray, so
    # RAY_ADDRESS=auto elsewhere on this machine never finds this cluster.
    temp_dir = tempfile.mkdtemp(prefix="fmray", dir="/tmp")
    port = free_port()
    common = ["--num-cpus", "1", "--node-ip-address", LOOPBACK, "--disable-usage-stats"]
    common += ["--object-store-memory", str(80 * 2**20)]  # Ray's minimum is 75 MiB
    watch = _Watch(token)
    try:
        _ray_start(
            ["--head", "--port", str(port), "--temp-dir", temp_dir, "--include-dashboard=false"]
            + ["--ray-client-server-port", str(free_port())]
            + common,
            env=env,
        )
        _ray_start(["--address", f"{LOOPBACK}:{port}"] + common, env=env)
        raylets = {pid for pid, (_, cmd) in _marked(token).items() if "raylet/raylet " in cmd}
        assert len(raylets) == 2, _marked(token)
        monkeypatch.setenv("RAY_ADDRESS", f"{LOOPBACK}:{port}")
        watch.start()
        result = simulate_on_ray(
            {**CONFIG, "run-dir": str(tmp_path / "run")}, num_clients=4, timeout=300
        )
    finally:
        watch.done.set()
        _stop(token)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert [r.clients_trained for r in result.rounds] == [4, 4]
    assert result.final.epsilon_max > 0
    trained_under = {raylet for _, raylet in watch.busy}
    assert trained_under == raylets, f"actors busy under {trained_under}, raylets {raylets}"
    assert _marked(token) == {}  # every process the two `ray start` left: gone, by PID
