"""Which data each simulated client holds: node configs for the in-process federation.

- a built-in dataset, or one custom dataset (run-config ``data-path``): client ``i`` gets
  node config ``partition-id = i`` of ``num-partitions`` (the partitioner splits it);
- a glob pattern as ``data-path`` (``clients/*``): one client per match, in sorted order;
- ``client_data=[...]`` of the Python API: one client per item, a path or a dataset
  object (a torch ``Dataset`` or a ``(train, test)`` pair), given as node config
  ``data-path`` exactly as a deployed SuperNode gets its own.

Every simulated node is marked ``simulated`` (``fedmodel.privacy.node_policy``), and
:func:`check_delta` holds δ below 1/N of the smallest client before anything runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from fedmodel.config import ConfigError, RunConfig
from fedmodel.data import DATASETS, partition_sizes
from fedmodel.data.sources import (
    NODE_DATA_KEY,
    DataOptions,
    hold,
    is_pattern,
    load_source,
    match_client_paths,
)
from fedmodel.privacy import delta as delta_rule

DEFAULT_NUM_CLIENTS = 10
# The user runs these nodes and the server: seeded randomness (reproducible runs), and the
# other simulated-node defaults of fedmodel.privacy.node_policy.
SIMULATED_NODE = {"simulated": True}


def client_node_configs(
    config: RunConfig, *, num_clients: int | None, client_data: Sequence[Any] | None
) -> tuple[list[dict[str, Any]], list[str]]:
    """One node config per client, and the names of objects held for them.

    The caller releases the held names (``fedmodel.data.sources.release``) after the
    run. A single custom dataset is loaded and checked here, before anything is
    written, so its errors come once and not from every client.
    """
    if client_data is not None:
        return _from_client_data(config, num_clients=num_clients, client_data=client_data)
    if DATASETS.get(config.dataset).own_data and not config.data_path:
        raise ConfigError(
            "dataset = 'custom' needs run-config key 'data-path' (a file, folder, glob "
            "pattern or package.module:function), or simulate(client_data=[...])"
        )
    if DATASETS.get(config.dataset).own_data and is_pattern(config.data_path):
        matches = len(match_client_paths(config.data_path))
        if num_clients is not None and num_clients != matches:
            raise ConfigError(
                f"run-config key 'data-path' = {config.data_path!r} matches {matches} entries "
                f"but {num_clients} clients were asked for; one match per client"
            )
        num_clients = matches
    elif DATASETS.get(config.dataset).own_data:
        load_source(config.data_path, options=DataOptions.from_config(config))
    num_clients = DEFAULT_NUM_CLIENTS if num_clients is None else num_clients
    _check_count(num_clients)
    return [
        {**SIMULATED_NODE, "partition-id": i, "num-partitions": num_clients}
        for i in range(num_clients)
    ], []


def _from_client_data(
    config: RunConfig, *, num_clients: int | None, client_data: Sequence[Any]
) -> tuple[list[dict[str, Any]], list[str]]:
    if not DATASETS.get(config.dataset).own_data:
        raise ConfigError(
            f"client_data needs run-config key 'dataset' = 'custom' (it is {config.dataset!r})"
        )
    if config.data_path:
        raise ConfigError(
            f"run-config key 'data-path' = {config.data_path!r} and client_data both give the "
            "clients' data; use one"
        )
    if isinstance(client_data, str | os.PathLike):
        raise ConfigError(
            "client_data is a list with one item per client; for a folder of per-client "
            "files use run-config 'data-path' with a pattern, e.g. 'clients/*'"
        )
    if num_clients is not None and num_clients != len(client_data):
        raise ConfigError(
            f"num_clients = {num_clients} but client_data has {len(client_data)} items"
        )
    _check_count(len(client_data))
    node_configs, held = [], []
    for item in client_data:
        if isinstance(item, str | os.PathLike):
            node_configs.append({**SIMULATED_NODE, NODE_DATA_KEY: os.fspath(item)})
        else:
            held.append(hold(item))
            node_configs.append({**SIMULATED_NODE, NODE_DATA_KEY: held[-1]})
    return node_configs, held


def _check_count(num_clients: int) -> None:
    if num_clients < 1:
        raise ConfigError(f"number of clients = {num_clients} is out of range: must be >= 1")


def check_delta(config: RunConfig, *, num_clients: int) -> None:
    """Refuse a δ that is not below 1/N for the smallest client (N its record count).

    Custom data is not known here: each client checks its own before round 1.
    """
    if DATASETS.get(config.dataset).own_data:
        return
    try:
        sizes = partition_sizes(config, num_partitions=num_clients)
    except ValueError as error:
        raise ConfigError(
            f"cannot split dataset {config.dataset!r} for {num_clients} clients: {error}"
        ) from error
    if config.dp:
        delta_rule.check_delta(config.delta, num_examples=min(sizes), where="the smallest client")
