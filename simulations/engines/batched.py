"""The batched engine: the in-process engine, with each round's clients trained at once.

``engine = "batched"`` runs the unchanged ServerApp and strategy on a
:class:`~simulations.engines.batched_grid.BatchedGrid`, which trains a round's sampled
clients as one cohort (:mod:`fedmodel.training.batched_training`) and replies for each
as the ClientApp would. What it cannot batch runs on the sequential in-process engine,
with the reason printed once (:func:`batching_obstacle`).

``engine = "auto"`` picks batched where it is faster (:func:`choose_engine`, a rule from
``simulations/benchmarks/batched.py``'s measurements) and says why, once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fedmodel.config import RunConfig
from simulations.engines.result import SimulationResult

if TYPE_CHECKING:
    from torch import nn

# Above this batch size a conv model is compute-bound and vmap's grouped convolutions
# lose to the sequential loop (MNIST CNN B = 60: 0.6-0.96x, issue 13). Under DP the
# built-in models take the layer-by-layer path instead, faster at every batch size
# measured (MNIST CNN B = 10 / 60 / 250: 1.5x / 1.1x / 1.45x with one thread,
# simulations/benchmarks/batched.py, RESULTS.md): the limit applies only to vmap.
AUTO_MAX_CONV_BATCH = 32


def batching_obstacle(config: RunConfig, *, noise_source: str, workers: int) -> str | None:
    """Why this run cannot be batched (None: it can): the first setting in the way.

    Settings other helpers add may not exist yet: each is read with its default.
    """
    checks = (
        (workers > 0, f"--workers {workers}: worker processes train one client per call"),
        (
            noise_source == "secure",
            "noise-source = secure: ChaCha20 noise is drawn per client by the ClientApp",
        ),
        (
            config.byzantine_fraction > 0,
            "byzantine-fraction > 0: Byzantine nodes corrupt messages one by one",
        ),
        (
            bool(getattr(config, "secure_aggregation", False)),
            "secure-aggregation = true: SecAgg+ runs its own message rounds per client",
        ),
        (
            getattr(config, "augmentation", "none") != "none",
            f"augmentation = {getattr(config, 'augmentation', 'none')!r}: random per client",
        ),
        (
            float(getattr(config, "mixup_alpha", 0.0)) > 0,
            "mixup-alpha > 0: mixup is not batched",
        ),
        (
            int(getattr(config, "augmentation_multiplicity", 1)) > 1,
            "augmentation-multiplicity > 1: augmentation is not batched",
        ),
        (
            str(getattr(config, "privacy_unit", "record")) != "record",
            f"privacy-unit = {getattr(config, 'privacy_unit', '')!r}: user-level DP is not batched",
        ),
    )
    return next((why for blocked, why in checks if blocked), None)


def choose_engine(config: RunConfig, *, noise_source: str, workers: int) -> tuple[str, str]:
    """``(engine, reason)`` for ``engine = "auto"``: ``"batched"`` where it is faster.

    Batched wins where per-step overhead dominates (small models, small batches) and,
    under DP, for the built-in models at any batch size (per-example gradients layer
    by layer). A conv model trained through ``vmap`` (without DP, or a model with its
    own ``forward``) at a batch size above :data:`AUTO_MAX_CONV_BATCH` is compute-bound,
    so it stays sequential.
    """
    from fedmodel.training.batched_training import has_conv, layer_by_layer

    obstacle = batching_obstacle(config, noise_source=noise_source, workers=workers)
    if obstacle is not None:
        return "inprocess", f"sequential in-process engine ({obstacle})"
    model = _model(config)
    if model is None:
        return "inprocess", (
            "sequential in-process engine (custom data: the model is known only after the "
            "clients describe their data)"
        )
    convolutions = has_conv(model)
    by_layer = config.dp and layer_by_layer(model)
    if convolutions and not by_layer and config.batch_size > AUTO_MAX_CONV_BATCH:
        return "inprocess", (
            f"sequential in-process engine (a conv model through vmap at batch-size "
            f"{config.batch_size} > {AUTO_MAX_CONV_BATCH} is compute-bound: batching is slower)"
        )
    kind = "conv model" if convolutions else "no conv layers"
    route = ", per-example gradients layer by layer" if by_layer else ""
    return "batched", (
        f"batched engine ({kind}{route}, batch-size {config.batch_size}: faster batched)"
    )


def simulate_batched(
    config: RunConfig | Mapping[str, Any] | None = None,
    *,
    num_clients: int | None = None,
    client_data: Sequence[Any] | None = None,
    verbose: bool = False,
    workers: int = 0,
    noise_source: str = "seeded",
    auto: bool = False,
) -> SimulationResult:
    """Run the federation with the batched Grid, or sequentially where it cannot batch.

    The parameters are those of :func:`simulations.simulate`; ``auto`` applies
    :func:`choose_engine` first. One line says which engine runs and why.
    """
    from simulations.engines.batched_grid import BatchedGrid
    from simulations.engines.inprocess import simulate_in_process

    run_config = config if isinstance(config, RunConfig) else RunConfig.from_mapping(config or {})
    if auto:
        engine, reason = choose_engine(run_config, noise_source=noise_source, workers=workers)
        print(f"engine auto: {reason}", flush=True)
    else:
        obstacle = batching_obstacle(run_config, noise_source=noise_source, workers=workers)
        engine = "inprocess" if obstacle else "batched"
        if obstacle:
            print(
                f"batched engine: {obstacle}; running the sequential in-process engine", flush=True
            )
    return simulate_in_process(
        run_config,
        num_clients=num_clients,
        client_data=client_data,
        verbose=verbose,
        workers=workers,
        noise_source=noise_source,
        grid_type=BatchedGrid if engine == "batched" else None,
    )


def _model(config: RunConfig) -> nn.Module | None:
    """The run's model as the clients build it (None: not known before the run)."""
    from fedmodel.data import DATASETS, data_shape
    from fedmodel.models import build_model, model_settings

    if DATASETS.get(config.dataset).own_data:
        return None
    input_shape, num_classes = data_shape(config)
    return build_model(
        config.model,
        input_shape=input_shape,
        num_classes=num_classes,
        settings=model_settings(config),
    )
