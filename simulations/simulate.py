"""The Python API of a simulation: one call runs a whole federation in this process."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from fedmodel.config import ConfigError, RunConfig
from fedmodel.data import partition_sizes
from fedmodel.data.sources import release
from fedmodel.privacy.node_policy import NOISE_SOURCES
from fedmodel.results import RoundMetrics, default_run_dir, load_metrics
from simulations.client_data import DEFAULT_NUM_CLIENTS, client_node_configs
from simulations.inprocess import InProcessGrid
from simulations.worker_pool import WorkerPool

CLIENT_APP = "client.client_app:app"  # as [tool.flwr.app.components] in pyproject.toml

__all__ = ["DEFAULT_NUM_CLIENTS", "SimulationResult", "check_delta", "simulate"]


@dataclass(frozen=True)
class SimulationResult:
    """Where a run's folder is and what each round measured."""

    run_dir: Path
    rounds: list[RoundMetrics]

    @property
    def final(self) -> RoundMetrics:
        return self.rounds[-1]


def simulate(
    config: RunConfig | Mapping[str, Any] | None = None,
    *,
    num_clients: int | None = None,
    client_data: Sequence[Any] | None = None,
    verbose: bool = False,
    workers: int = 0,
    engine: str = "inprocess",
    noise_source: str = "seeded",
) -> SimulationResult:
    """Run a federated job in-process: the ServerApp against ``num_clients`` ClientApps.

    Parameters
    ----------
    config : RunConfig or mapping with kebab-case keys, optional
        The run config; missing keys take the defaults of ``pyproject.toml``.
    num_clients : int, optional
        Number of clients; client ``i`` holds partition ``i`` of the dataset. Default:
        one per item of ``client_data`` or match of a ``data-path`` pattern, else 10.
    client_data : sequence, optional
        With ``dataset = "custom"``: each client's own data, one item per client, each a
        path (file, folder or ``package.module:function``) or a dataset object (a torch
        ``Dataset`` or a ``(train, test)`` pair). See README, "Use your own data".
    verbose : bool
        Show Flower's own log lines too (off: one line per round).
    workers : int
        Train each round's clients in this many worker processes (0: in this process).
        Results are bit-identical either way (see ``simulations/worker_pool.py``).
    engine : str
        ``"inprocess"`` (this process, optionally with ``workers``) or ``"ray"``:
        Flower's Simulation Engine through a local SuperLink, see
        :func:`simulations.ray_engine.simulate_on_ray` (``workers`` = Ray actors).
    noise_source : str
        Where the simulated nodes draw DP noise and Poisson batches (node config
        ``noise-source``): ``"seeded"`` (reproducible bit for bit) or ``"secure"``
        (as a deployed node: ChaCha20 from ``os.urandom``). In-process engine only.

    Clients train with one torch thread (see ``simulations/inprocess.py``); the server's
    evaluation keeps torch's default.

    Everything is validated before any file is written: an invalid config raises
    :class:`~fedmodel.config.ConfigError`, data that no client can train on raises
    :class:`~fedmodel.data.sources.DataError`; either leaves no run folder behind.
    """
    if engine == "ray":
        from simulations.ray_engine import simulate_on_ray

        if client_data is not None:
            raise ConfigError("the Ray engine takes client data from the run config only")
        if noise_source != "seeded":
            raise ConfigError("the Ray engine's simulated nodes draw seeded noise only")
        return simulate_on_ray(config, num_clients=num_clients, workers=workers, verbose=verbose)
    if engine != "inprocess":
        raise ConfigError(f"engine {engine!r} is not known: must be 'inprocess' or 'ray'")
    if workers < 0:
        raise ConfigError(f"number of workers = {workers} is out of range: must be >= 0")
    from client.client_app import app as client_app
    from server.server_app import app as server_app

    if isinstance(config, RunConfig):
        run_config = config
    else:
        run_config = RunConfig.from_mapping(config or {})
    run_dir = Path(run_config.run_dir) if run_config.run_dir else default_run_dir(run_config)
    if (run_dir / "config.json").exists():
        raise ConfigError(f"run-config key 'run-dir' = {str(run_dir)!r} already holds a run")
    if noise_source not in NOISE_SOURCES:
        raise ConfigError(
            f"noise source {noise_source!r} is not known: must be one of {', '.join(NOISE_SOURCES)}"
        )
    node_configs, held = client_node_configs(
        run_config, num_clients=num_clients, client_data=client_data
    )
    node_configs = [{**node, "noise-source": noise_source} for node in node_configs]
    check_delta(run_config, num_clients=len(node_configs))
    run_config = run_config.replace(run_dir=str(run_dir))
    if workers and held:
        raise ConfigError("worker processes cannot see in-memory client data: pass paths")

    pool = WorkerPool(client_app=CLIENT_APP, num_workers=workers) if workers else None
    grid = InProcessGrid(
        client_app=client_app,
        run_config=run_config.to_mapping(),
        node_configs=node_configs,
        pool=pool,
    )
    # Flower's runtimes tell the ServerApp process who it is; messages are stamped with it.
    TaskIdentity.task_id, TaskIdentity.run_id = 1, grid.run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    server_context = Context(
        run_id=grid.run.run_id,
        node_id=SUPERLINK_NODE_ID,
        node_config={},
        state=RecordDict(),
        run_config=run_config.to_mapping(),
    )
    flower_logger = logging.getLogger("flwr")
    previous_level = flower_logger.level
    if not verbose:
        flower_logger.setLevel(logging.WARNING)
    try:
        server_app(grid, server_context)
    finally:
        flower_logger.setLevel(previous_level)
        if pool is not None:
            pool.close()
        for name in held:
            release(name)
    return SimulationResult(run_dir=run_dir, rounds=load_metrics(run_dir))


def check_delta(config: RunConfig, *, num_clients: int) -> None:
    """Refuse a δ that is not below 1/N for the smallest client (N its record count).

    Custom data is not known here: each client checks its own before round 1.
    """
    if config.dataset == "custom":
        return
    try:
        sizes = partition_sizes(config, num_partitions=num_clients)
    except ValueError as error:
        raise ConfigError(
            f"cannot split dataset {config.dataset!r} for {num_clients} clients: {error}"
        ) from error
    smallest = min(sizes)
    if config.dp and config.delta >= 1.0 / smallest:
        raise ConfigError(
            f"run-config key 'delta' = {config.delta:g} is out of range: must be below "
            f"1/{smallest} = {1.0 / smallest:.3g} (1 / records of the smallest client); "
            "a larger δ permits leaking a whole record"
        )
