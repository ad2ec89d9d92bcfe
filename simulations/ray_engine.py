"""Flower's Simulation Engine (Ray backend) on the same ServerApp and ClientApp.

Flower 1.42 runs a simulation inside a SuperLink started with ``--simulation``:
``flwr run`` builds the app in this project folder into a FAB and submits it; the
SuperLink launches ``flwr-simulation``, which starts Ray (or joins a running Ray
cluster), keeps a pool of Ray actors (one per ``client-resources-num-cpus`` CPUs) and
runs the unchanged ServerApp and ClientApp, giving each of the ``num-supernodes``
virtual nodes the node config ``partition-id`` / ``num-partitions``. That is what
``flwr run . local`` with Flower's default ``:local:`` connection does; the older
``flwr.simulation.run_simulation`` is deprecated.

:func:`simulate_on_ray` does the same privately, so it never touches the user's
``~/.flwr``, a fixed port, or another SuperLink on this machine: a temporary
``FLWR_HOME`` with one SuperLink connection, a SuperLink on a free loopback port, no
runtime dependency installation (this environment already has everything), and a Ray
instance of its own unless ``RAY_ADDRESS`` names a cluster to join (README, "Simulate at
scale"). The SuperLink and everything it started are stopped at the end, also on error.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedmodel.config import ConfigError, RunConfig
from fedmodel.privacy.node_policy import SIMULATED_NODES_ENV
from fedmodel.results import default_run_dir, load_metrics
from simulations.simulate import DEFAULT_NUM_CLIENTS, SimulationResult, check_delta

PROJECT_DIR = Path(__file__).resolve().parents[1]
CONNECTION = "fedmodel-simulation"
STARTUP_TIMEOUT = 60.0
# Flower's and Ray's own log lines; hidden unless verbose (the log file keeps them all).
_FLOWER_LOG_LINE = re.compile(
    r"^(\x1b\[\d+m)?(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s*(\x1b\[0m)?:|^\d\d/\d\d/\d{4} "
    r"|^(Loading project configuration|Successfully (started run|installed)|Using SuperLink)"
    r"|^(\x1b\[\d+m)?\(\w+ pid=|^(\x1b\[\d+m)?\(pid=|Warning: |^\s+warnings\.warn"
)


def simulate_on_ray(
    config: RunConfig | Mapping[str, Any] | None = None,
    *,
    num_clients: int | None = None,
    workers: int = 0,
    verbose: bool = False,
    timeout: float | None = None,
) -> SimulationResult:
    """Run the ServerApp and ``num_clients`` ClientApps on Flower's Ray simulation engine.

    Parameters
    ----------
    config : RunConfig or mapping with kebab-case keys, optional
        The run config; missing keys take the defaults of ``pyproject.toml``.
    num_clients : int, optional
        Number of virtual nodes (default 10); node ``i`` holds partition ``i``.
    workers : int
        Number of Ray actors (each one CPU) on a local Ray instance; 0: one per CPU.
        Ignored when joining a cluster (``RAY_ADDRESS``): the cluster's CPUs decide.
    verbose : bool
        Show Flower's and Ray's log lines too (off: the ServerApp's lines only).
    timeout : float, optional
        Seconds the run may take before it is stopped (and this raises).

    Returns the same :class:`~simulations.simulate.SimulationResult` as the in-process
    engine; the run folder is written by the same ServerApp.
    """
    run_config = config if isinstance(config, RunConfig) else RunConfig.from_mapping(config or {})
    num_clients = DEFAULT_NUM_CLIENTS if num_clients is None else num_clients
    if num_clients < 1:
        raise ConfigError(f"number of clients = {num_clients} is out of range: must be >= 1")
    if workers < 0:
        raise ConfigError(f"number of workers = {workers} is out of range: must be >= 0")
    check_delta(run_config, num_clients=num_clients)
    run_dir = Path(run_config.run_dir) if run_config.run_dir else default_run_dir(run_config)
    run_dir = run_dir.resolve()  # the ServerApp runs in another process and folder
    if (run_dir / "config.json").exists():
        raise ConfigError(f"run-config key 'run-dir' = {str(run_dir)!r} already holds a run")
    run_config = run_config.replace(run_dir=str(run_dir))
    if not (PROJECT_DIR / "pyproject.toml").is_file():
        raise RuntimeError(
            f"the Ray engine builds the Flower app from the project folder, and "
            f"{PROJECT_DIR} has no pyproject.toml; run from a source checkout"
        )

    home = Path(tempfile.mkdtemp(prefix="fedmodel-ray-"))
    port = _free_port()
    env = _flower_env(home)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n',
        encoding="utf-8",
    )
    run_config_file = home / "run-config.toml"
    run_config_file.write_text(_toml(run_config.to_mapping()), encoding="utf-8")
    federation = [f"num-supernodes={num_clients}", "client-resources-num-cpus=1"]
    if workers and "RAY_ADDRESS" not in os.environ:
        federation.append(f"init-args-num-cpus={workers}")
    if "RAY_ADDRESS" not in os.environ:
        env["RAY_ADDRESS"] = "local"  # never join a cluster someone else started here

    log_path = home / "simulation.log"
    succeeded = False
    with open(log_path, "w", encoding="utf-8") as log:
        superlink = subprocess.Popen(
            [
                _executable("flower-superlink"),
                "--insecure",
                "--simulation",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=home,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole below
        )
        try:
            _wait_for_health(port, superlink, log_path)
            _flwr_run(
                [
                    _executable("flwr"),
                    "run",
                    str(PROJECT_DIR),
                    CONNECTION,
                    "--run-config",
                    str(run_config_file),
                    "--federation-config",
                    " ".join(federation),
                    "--stream",
                ],
                env=env,
                cwd=home,
                log=log,
                verbose=verbose,
                timeout=timeout,
            )
            rounds = load_metrics(run_dir) if (run_dir / "metrics.json").is_file() else []
            if len(rounds) != run_config.num_server_rounds:
                raise RuntimeError(
                    f"the Ray simulation ended after {len(rounds)} of "
                    f"{run_config.num_server_rounds} rounds; log: {log_path}\n"
                    + _tail(log_path)
                )
            succeeded = True
        finally:
            _stop_group(superlink)
    if succeeded:
        shutil.rmtree(home, ignore_errors=True)
    return SimulationResult(run_dir=run_dir, rounds=rounds)


def _flwr_run(
    command: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    log: Any,
    verbose: bool,
    timeout: float | None,
) -> None:
    """Run ``flwr run --stream``: copy its output to the log, show the ServerApp's lines."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        _stop_group(process)

    timer = threading.Timer(timeout, expire) if timeout is not None else None
    try:
        if timer is not None:
            timer.start()
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            if verbose or not _FLOWER_LOG_LINE.search(line):
                print(line, end="", flush=True)
        code = process.wait()
        if expired.is_set():
            raise TimeoutError(f"the Ray simulation took longer than {timeout} s; log: {log.name}")
        if code != 0:
            raise RuntimeError(f"`flwr run` failed with exit code {code}; log: {log.name}")
    finally:
        if timer is not None:
            timer.cancel()
        _stop_group(process)


def _flower_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        # Flower starts flwr-simulation and friends by name: find this environment's.
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",  # Ray's default to come; silences its notice
        # Flower gives Ray's virtual nodes no node config of ours: mark them simulated
        # (seeded randomness etc., fedmodel.privacy.node_policy) through their environment.
        **{SIMULATED_NODES_ENV: "1"},
    )
    return env


def _executable(name: str) -> str:
    path = Path(sys.executable).parent / name
    found = str(path) if path.is_file() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found next to {sys.executable}; is flwr installed?")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_health(port: int, superlink: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if superlink.poll() is not None:
            raise RuntimeError(
                f"the SuperLink exited with code {superlink.returncode}:\n{_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(
        f"the SuperLink did not answer within {STARTUP_TIMEOUT} s:\n{_tail(log_path)}"
    )


def _stop_group(process: subprocess.Popen) -> None:
    """Stop ``process`` and every process of its group (it leads one): TERM, then KILL."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    try:  # also children still alive after their leader exited
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _toml(values: Mapping[str, Any]) -> str:
    """A flat run config as TOML (strings, integers, finite floats, booleans)."""
    import tomli_w  # a dependency of flwr

    return tomli_w.dumps(dict(values))


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
