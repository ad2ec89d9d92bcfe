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

GPUs (README, "GPU"): ``gpus_per_client`` is Flower's ``client-resources-num-gpus``, the
share of a GPU Ray reserves for each actor (0.25: four actors per GPU). Ray sets each
actor's ``CUDA_VISIBLE_DEVICES`` to the GPUs it reserved, and to none when it reserved
none, so run-config ``device = "auto"`` trains on the actor's GPU share or on its CPU. The
ServerApp (central evaluation) runs outside the actors and sees the machine's GPUs.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from fedmodel.config import ConfigError, RunConfig
from fedmodel.privacy.node_policy import SIMULATED_NODES_ENV
from fedmodel.results import check_new_run_dir, default_run_dir, load_metrics
from server.deployment.flower_processes import (
    LOOPBACK,
    ManagedProcess,
    config_arg,
    flower_env,
    flower_executable,
    free_port,
    stream_output,
    tail,
    wait_for_health,
    write_cli_config,
)
from simulations.client_data import DEFAULT_NUM_CLIENTS, check_delta
from simulations.engines.result import SimulationResult

PROJECT_DIR = Path(__file__).resolve().parents[2]
CONNECTION = "fedmodel-simulation"
STARTUP_TIMEOUT = 60.0
# Flower's and Ray's own log lines; hidden unless verbose (the log file keeps them all).
_FLOWER_LOG_LINE = re.compile(
    r"^(\x1b\[\d+m)?(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s*(\x1b\[0m)?:|^\d\d/\d\d/\d{4} "
    r"|^(Loading project configuration|Successfully (started run|installed)|Using SuperLink)"
    r"|^(\x1b\[\d+m)?\(\w+ pid=|^(\x1b\[\d+m)?\(pid=|Warning: |^\s+warnings\.warn"
)


def _check_gpus(config: RunConfig, gpus_per_client: float) -> None:
    """Refuse GPU settings Ray would hang on or the actors could not honour, up front."""
    if not (gpus_per_client >= 0 and math.isfinite(gpus_per_client)) or (
        gpus_per_client > 1 and not float(gpus_per_client).is_integer()
    ):
        # Ray's rule: a share of one GPU, or whole GPUs.
        raise ConfigError(
            f"--gpus-per-client = {gpus_per_client!r} is out of range: must be 0, a fraction "
            "in (0, 1] or a whole number of GPUs"
        )
    if config.device not in ("auto", "cpu") and not gpus_per_client:
        raise ConfigError(
            f"run-config key 'device' = {config.device!r} on the Ray engine needs "
            "--gpus-per-client > 0: Ray hides the GPUs from actors that reserve none"
        )
    if gpus_per_client and "RAY_ADDRESS" not in os.environ:
        import torch  # the local Ray instance has the GPUs this process sees

        if not torch.cuda.is_available():
            raise ConfigError(
                f"--gpus-per-client = {gpus_per_client!r}, but this machine has no CUDA "
                "device for the local Ray instance (Ray would wait forever for one); "
                "set RAY_ADDRESS to join a cluster with GPUs, or leave it at 0"
            )


def simulate_on_ray(
    config: RunConfig | Mapping[str, Any] | None = None,
    *,
    num_clients: int | None = None,
    workers: int = 0,
    gpus_per_client: float = 0.0,
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
    gpus_per_client : float
        GPUs Ray reserves per actor (Flower's ``client-resources-num-gpus``): 0 (none:
        clients train on CPUs), a fraction below 1 (actors share a GPU) or a whole number.
    verbose : bool
        Show Flower's and Ray's log lines too (off: the ServerApp's lines only).
    timeout : float, optional
        Seconds the run may take before it is stopped (and this raises).

    Returns the same :class:`~simulations.engines.result.SimulationResult` as the in-process
    engine; the run folder is written by the same ServerApp.
    """
    run_config = config if isinstance(config, RunConfig) else RunConfig.from_mapping(config or {})
    if run_config.byzantine_fraction > 0:
        # Flower's engine runs the unchanged ClientApp, which never reads these keys.
        raise ConfigError(
            f"run-config key 'byzantine-fraction' = {run_config.byzantine_fraction!r}: "
            "Byzantine clients are simulated by the in-process engine only (engine = "
            "'inprocess'); the Ray engine runs honest ClientApps"
        )
    num_clients = DEFAULT_NUM_CLIENTS if num_clients is None else num_clients
    if num_clients < 1:
        raise ConfigError(f"number of clients = {num_clients} is out of range: must be >= 1")
    if workers < 0:
        raise ConfigError(f"number of workers = {workers} is out of range: must be >= 0")
    _check_gpus(run_config, gpus_per_client)
    check_delta(run_config, num_clients=num_clients)
    run_dir = Path(run_config.run_dir) if run_config.run_dir else default_run_dir(run_config)
    run_dir = run_dir.resolve()  # the ServerApp runs in another process and folder
    check_new_run_dir(run_dir)
    run_config = run_config.replace(run_dir=str(run_dir))
    if not (PROJECT_DIR / "pyproject.toml").is_file():
        raise RuntimeError(
            f"the Ray engine builds the Flower app from the project folder, and "
            f"{PROJECT_DIR} has no pyproject.toml; run from a source checkout"
        )

    home = Path(tempfile.mkdtemp(prefix="fedmodel-ray-"))
    port = free_port()
    address = f"{LOOPBACK}:{port}"
    env = flower_env(
        home,
        {
            # Ray empties CUDA_VISIBLE_DEVICES of actors that reserve no GPU (today's
            # default, kept explicitly: with "0", Ray's default to come, every actor would see
            # every GPU and "auto" would put them all on cuda:0 unreserved).
            "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1",
            # Flower gives Ray's virtual nodes no node config of ours: mark them simulated
            # (seeded randomness etc., fedmodel.privacy.node_policy) through their environment.
            SIMULATED_NODES_ENV: "1",
        },
    )
    write_cli_config(home, CONNECTION, address)
    run_config_file = home / "run-config.toml"
    run_config_file.write_text(tomli_w.dumps(run_config.to_mapping()), encoding="utf-8")
    federation: dict[str, Any] = {"num-supernodes": num_clients, "client-resources-num-cpus": 1}
    if gpus_per_client:
        federation["client-resources-num-gpus"] = float(gpus_per_client)
    if workers and "RAY_ADDRESS" not in os.environ:
        federation["init-args-num-cpus"] = workers
    if "RAY_ADDRESS" not in os.environ:
        env["RAY_ADDRESS"] = "local"  # never join a cluster someone else started here

    log_path = home / "simulation.log"
    superlink = ManagedProcess(  # its own process group: stopped as a whole below
        "SuperLink",
        [
            flower_executable("flower-superlink"),
            "--insecure",
            "--simulation",
            "--disable-runtime-dependency-installation",
            "--host",
            LOOPBACK,
            "--port",
            str(port),
        ],
        log_path=log_path,
        env=env,
        cwd=home,
    )
    try:
        wait_for_health(superlink, address, timeout=STARTUP_TIMEOUT)
        with open(log_path, "a", encoding="utf-8") as log:

            def show(line: str) -> None:  # copy to the log, show the ServerApp's lines
                log.write(line)
                if verbose or not _FLOWER_LOG_LINE.search(line):
                    print(line, end="", flush=True)

            code = stream_output(
                [
                    flower_executable("flwr"),
                    "run",
                    str(PROJECT_DIR),
                    CONNECTION,
                    "--run-config",
                    str(run_config_file),
                    "--federation-config",
                    config_arg(federation),
                    "--stream",
                ],
                env=env,
                cwd=home,
                on_line=show,
                timeout=timeout,
            )
        if code is None:
            raise TimeoutError(f"the Ray simulation took longer than {timeout} s; log: {log_path}")
        if code != 0:
            raise RuntimeError(f"`flwr run` failed with exit code {code}; log: {log_path}")
        rounds = load_metrics(run_dir) if (run_dir / "metrics.json").is_file() else []
        if len(rounds) != run_config.num_server_rounds:
            raise RuntimeError(
                f"the Ray simulation ended after {len(rounds)} of "
                f"{run_config.num_server_rounds} rounds; log: {log_path}\n"
                + tail(superlink.log(), lines=40)
            )
    finally:
        superlink.stop(timeout=20)
    shutil.rmtree(home, ignore_errors=True)
    return SimulationResult(run_dir=run_dir, rounds=rounds)
