"""The Python API of a simulation: one call runs a whole federation on this machine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedmodel.config import ConfigError, RunConfig
from simulations.engines import ENGINES
from simulations.engines.result import SimulationResult

__all__ = ["SimulationResult", "simulate"]


def simulate(
    config: RunConfig | Mapping[str, Any] | None = None,
    *,
    num_clients: int | None = None,
    client_data: Sequence[Any] | None = None,
    verbose: bool = False,
    workers: int = 0,
    engine: str = "inprocess",
    noise_source: str = "seeded",
    gpus_per_client: float = 0.0,
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
        Results are bit-identical either way (see ``simulations/engines/worker_pool.py``).
    engine : str
        ``"inprocess"`` (this process, optionally with ``workers``,
        :func:`simulations.engines.inprocess.simulate_in_process`) or ``"ray"``:
        Flower's Simulation Engine through a local SuperLink, see
        :func:`simulations.engines.ray.simulate_on_ray` (``workers`` = Ray actors), or
        ``"batched"``: in-process with each round's clients trained at once
        (:func:`simulations.engines.batched.simulate_batched`; what it cannot batch runs
        sequentially, the reason printed), or ``"auto"``: batched where it is faster.
    noise_source : str
        Where the simulated nodes draw DP noise and Poisson batches (node config
        ``noise-source``): ``"seeded"`` (reproducible bit for bit) or ``"secure"``
        (as a deployed node: ChaCha20 from ``os.urandom``). In-process engine only.
    gpus_per_client : float
        Ray engine only: GPUs Ray reserves per client actor (Flower's
        ``client-resources-num-gpus``; fractions share a GPU). The in-process engine and
        its workers use run-config ``device``, one device per process (README, "GPU").

    Clients train with one torch thread (see ``simulations/engines/clientapp.py``); the
    server's evaluation keeps torch's default.

    Everything is validated before any file is written: an invalid config raises
    :class:`~fedmodel.config.ConfigError`, data that no client can train on raises
    :class:`~fedmodel.data.sources.DataError`; either leaves no run folder behind.
    """
    if engine == "ray":
        from simulations.engines.ray import simulate_on_ray

        if client_data is not None:
            raise ConfigError("the Ray engine takes client data from the run config only")
        if noise_source != "seeded":
            raise ConfigError("the Ray engine's simulated nodes draw seeded noise only")
        resume = config.resume if isinstance(config, RunConfig) else (config or {}).get("resume")
        if resume:
            # Its nodes' Contexts (their privacy ledgers) live in Ray actors, not in the
            # checkpoint: resuming would restart every client's ε at 0.
            raise ConfigError(
                "run-config key 'resume' = true: resume runs on the in-process engine (engine "
                "= 'inprocess'), which checkpoints every node's Context; the Ray engine does not"
            )
        return simulate_on_ray(
            config,
            num_clients=num_clients,
            workers=workers,
            gpus_per_client=gpus_per_client,
            verbose=verbose,
        )
    if gpus_per_client:
        raise ConfigError(
            f"--gpus-per-client = {gpus_per_client!r} is for the Ray engine (engine = 'ray'); "
            "the other engines train on run-config 'device', one per process"
        )
    if engine in ("batched", "auto"):
        from simulations.engines.batched import simulate_batched

        return simulate_batched(
            config,
            num_clients=num_clients,
            client_data=client_data,
            verbose=verbose,
            workers=workers,
            noise_source=noise_source,
            auto=engine == "auto",
        )
    if engine != "inprocess":
        known = " or ".join(repr(name) for name in ENGINES)
        raise ConfigError(f"engine {engine!r} is not known: must be {known}")
    from simulations.engines.inprocess import simulate_in_process

    return simulate_in_process(
        config,
        num_clients=num_clients,
        client_data=client_data,
        verbose=verbose,
        workers=workers,
        noise_source=noise_source,
    )
