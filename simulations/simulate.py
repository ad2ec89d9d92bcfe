"""The Python API of a simulation: one call runs a whole federation in this process."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from fedmodel.config import ConfigError, RunConfig
from fedmodel.data import partition_sizes
from fedmodel.results import RoundMetrics, default_run_dir, load_metrics
from simulations.inprocess import InProcessGrid

DEFAULT_NUM_CLIENTS = 10


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
    num_clients: int = DEFAULT_NUM_CLIENTS,
    verbose: bool = False,
) -> SimulationResult:
    """Run a federated job in-process: the ServerApp against ``num_clients`` ClientApps.

    Parameters
    ----------
    config : RunConfig or mapping with kebab-case keys, optional
        The run config; missing keys take the defaults of ``pyproject.toml``.
    num_clients : int
        Number of clients; client ``i`` holds partition ``i`` of the dataset.
    verbose : bool
        Show Flower's own log lines too (off: one line per round).

    Everything is validated before any file is written: an invalid config raises
    :class:`~fedmodel.config.ConfigError` and leaves no run folder behind.
    """
    from client.client_app import app as client_app
    from server.server_app import app as server_app

    if isinstance(config, RunConfig):
        run_config = config
    else:
        run_config = RunConfig.from_mapping(config or {})
    if num_clients < 1:
        raise ConfigError(f"number of clients = {num_clients} is out of range: must be >= 1")
    check_delta(run_config, num_clients=num_clients)
    run_dir = Path(run_config.run_dir) if run_config.run_dir else default_run_dir(run_config)
    if (run_dir / "config.json").exists():
        raise ConfigError(f"run-config key 'run-dir' = {str(run_dir)!r} already holds a run")
    run_config = run_config.replace(run_dir=str(run_dir))

    grid = InProcessGrid(
        client_app=client_app,
        run_config=run_config.to_mapping(),
        node_configs=[
            {"partition-id": i, "num-partitions": num_clients} for i in range(num_clients)
        ],
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
    return SimulationResult(run_dir=run_dir, rounds=load_metrics(run_dir))


def check_delta(config: RunConfig, *, num_clients: int) -> None:
    """Refuse a δ that is not below 1/N for the smallest client (N its record count)."""
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
