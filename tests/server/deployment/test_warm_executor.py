"""The warm launcher: it goes when what it serves goes, and its children run the FAB's code.

Launchers are real processes (they import torch once: a few seconds each); stopped by
PID in ``finally`` whatever the outcome.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from server.deployment.flower_processes import LOOPBACK, ManagedProcess, free_port
from server.deployment.local_federation import PROJECT_ROOT, LocalFederation
from server.deployment.warm_executor import _process_runs

pytestmark = pytest.mark.slow
LAUNCHER = [sys.executable, "-m", "server.deployment.warm_executor", "--insecure"]
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def _wait_until_gone(pid: int, timeout: float) -> float | None:
    """Seconds until ``pid`` stopped running, or ``None`` if it still runs at ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if not _process_runs(pid):
            return time.monotonic() - start
        time.sleep(0.1)
    return None


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.timeout(90)
def test_a_launcher_exits_within_seconds_of_its_parents_death(tmp_path):
    # A short-lived parent starts the launcher with its own PID, waits until the launcher
    # is past its imports (its log says so), and exits.
    log = tmp_path / "launcher.log"
    parent = textwrap.dedent(
        f"""
        import os, subprocess, sys, time
        log = open({str(log)!r}, "ab")
        child = subprocess.Popen({LAUNCHER!r} + ["--runtime-api-address",
            "{LOOPBACK}:{free_port()}", "--parent-pid", str(os.getpid())],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        print(child.pid, flush=True)
        deadline = time.monotonic() + 60
        while b"Starting Flower SuperExec" not in open({str(log)!r}, "rb").read():
            if time.monotonic() > deadline:
                sys.exit("launcher did not start")
            time.sleep(0.1)
        """
    )
    launcher = None
    try:
        done = subprocess.run(
            [sys.executable, "-c", parent],
            capture_output=True,
            text=True,
            env=ENV,
            cwd=PROJECT_ROOT,
            timeout=80,
        )
        launcher = int(done.stdout.split()[0])
        assert done.returncode == 0, done.stderr + log.read_text()
        gone_after = _wait_until_gone(launcher, timeout=10)
        assert gone_after is not None and gone_after < 5, log.read_text()
    finally:
        if launcher is not None:
            _kill(launcher)


@pytest.mark.timeout(90)
def test_a_launcher_exits_when_the_runtime_api_it_serves_is_gone(tmp_path):
    # A stand-in for the SuperNode's port: accepts connections, then goes away.
    listener = socket.create_server((LOOPBACK, 0))
    port = listener.getsockname()[1]
    log = tmp_path / "launcher.log"
    with open(log, "ab") as out:
        launcher = subprocess.Popen(
            [
                *LAUNCHER,
                "--runtime-api-address",
                f"{LOOPBACK}:{port}",
                "--parent-pid",
                str(os.getpid()),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=ENV,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while "Starting Flower SuperExec" not in log.read_text(errors="replace"):
            assert launcher.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        time.sleep(1.0)  # it has seen the port up
        assert launcher.poll() is None
        listener.close()
        start = time.monotonic()
        launcher.wait(timeout=10)
        assert time.monotonic() - start < 5
        assert "Runtime API at" in log.read_text() and "is gone" in log.read_text()
    finally:
        listener.close()
        _kill(launcher.pid)
        launcher.wait()


MARKER = 'print("FAB-MARKER {}", __name__, flush=True)\n'
PUBLIC = {"ca.crt", "server.pem", "node-0.pub", "node-1.pub"}  # certificates and public keys: 0644


def _not_private(folder) -> list[str]:
    """Everything under ``folder`` but public certificates and keys that is not 0700/0600."""
    wrong = []
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(parent, name)
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            expected = 0o700 if name in dirs else 0o644 if name in PUBLIC else 0o600
            if mode != expected:
                wrong.append(f"{path} {mode:o}")
    return wrong


def _start_rogue_launchers(federation: LocalFederation, folder: Path) -> list[ManagedProcess]:
    """Warm launchers at node 0's and the SuperLink's Runtime APIs without their secret.

    One has no ``--superexec-auth-secret-file``, one a file with another secret; each is
    refused at its first ``AcquireTask`` and exits.
    """
    wrong = folder / "wrong.secret"
    folder.mkdir(mode=0o700)
    wrong.write_text("00" * 32)
    node_api = federation.executors[0].args
    node_api = node_api[node_api.index("--runtime-api-address") + 1]
    ca = ["--root-certificates", str(federation.certificates.ca_cert)]
    targets = {
        "no-secret-at-node-0": ["--insecure", "--runtime-api-address", node_api],
        "wrong-secret-at-superlink": [
            *ca,
            "--runtime-api-address",
            federation.address,
            "--superexec-auth-secret-file",
            str(wrong),
        ],
    }
    return [
        ManagedProcess(
            name,
            [*LAUNCHER[:3], *args, "--parent-pid", str(os.getpid())],
            log_path=folder / f"{name}.log",
            env=ENV,
            cwd=PROJECT_ROOT,
        )
        for name, args in targets.items()
    ]


@pytest.mark.timeout(300)
def test_children_run_the_submitted_code_a_pinned_node_refuses_it_files_are_private(tmp_path):
    """One federation, four checks: node 0 and the SuperLink run the submitted (changed)
    code; node 1, whose launcher pins the installed app, refuses it; launchers without
    the SuperExec secret are refused and serve no task; everything written under umask
    000 is owner-only."""
    from server.deployment.flwr_cli import stage_app

    app = stage_app(PROJECT_ROOT, tmp_path / "app")  # a copy of the app, then changed
    for package in ("server", "client"):
        with open(app / package / f"{package}_app.py", "a", encoding="utf-8") as module:
            module.write(MARKER.format(package))
    work, run_dir = tmp_path / "work", tmp_path / "run"
    previous = os.umask(0)  # the modes must not come from the umask
    try:
        # TLS, node keys, SuperExec secrets, logs, ledgers: everything a deployment writes.
        with LocalFederation(
            work, num_nodes=2, app_dir=app, auth=True, require_installed_app=[1]
        ) as federation:
            # Launchers without the secret poll while the run's tasks wait (started
            # with the run, their imports overlap it rather than add to the test's time).
            rogues = _start_rogue_launchers(federation, tmp_path / "rogue")
            try:
                outcome = federation.submit(
                    {
                        "num-server-rounds": 1,
                        "batch-size": 32,
                        "noise-multiplier": 1.5,
                        "target-epsilon": 0.0,
                        "run-dir": str(run_dir),
                    },
                    timeout=200,
                )
                for rogue in rogues:
                    try:
                        rogue.popen.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        pass  # still serving: stopped below, its exit code fails the test
            finally:
                for rogue in rogues:
                    rogue.stop()
            node_log, pinned_log = federation.nodes[0].log(), federation.nodes[1].log()
            superlink_log = federation.superlink.log()
    finally:
        os.umask(previous)
    assert outcome.succeeded, outcome.log[-3000:]
    # The launchers without the secret: Flower refused their AcquireTask (401), they
    # exited saying why, and no ClientApp or ServerApp ran through them.
    refused = "SuperExec authentication failed for /flwr.proto.Runtime/AcquireTask"
    assert refused in node_log and refused in superlink_log
    for rogue in rogues:
        assert rogue.popen.returncode == os.EX_CONFIG, rogue.log()
        assert "refused its SuperExec authentication (HTTP 401)" in rogue.log()
        assert "FAB-MARKER" not in rogue.log()
    # The ServerApp (on the SuperLink) and the ClientApp (on the node) ran the FAB's code.
    assert "FAB-MARKER server server.server_app" in outcome.log
    assert "FAB-MARKER client client.client_app" in node_log
    # The pinned node did not import it: its log says why, the server sees a load error
    # (Flower sends no more than that), and the round went on with node 0's update.
    assert "FAB-MARKER" not in pinned_log
    assert (
        "refused: the submitted app differs from the 'fedmodel' installed on this node in "
        "client/client_app.py" in pinned_log
    )
    assert "An exception was raised when attempting to load `ClientApp`" in outcome.log
    assert "1 clients | 1 failed" in outcome.log
    assert not _not_private(work)
    assert {"ca.key", "server.key"} <= {p.name for p in (work / "certs").iterdir()}
    assert list((work / "node-0" / "state").glob("privacy-ledger-*.json"))
    assert list(work.glob("*/superexec.secret")) and (work / "logs" / "node-0.log").exists()
    assert not _not_private(run_dir)  # written by the SuperLink's ServerApp, umask 077
