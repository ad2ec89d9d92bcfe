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
from typing import Any

from fedmodel.config import RunConfig
from simulations.engines.result import SimulationResult

# Above this expected batch size a conv model is compute-bound and vmap's grouped
# convolutions lose to the sequential loop (MNIST CNN B = 60: 0.6-0.96x, issue 13);
# at B = 10 batched wins (simulations/benchmarks/batched.py, RESULTS.md).
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

    Batched wins where per-step overhead dominates: small models, small batches. A
    conv model at an expected batch size above :data:`AUTO_MAX_CONV_BATCH` is
    compute-bound, so it stays sequential.
    """
    obstacle = batching_obstacle(config, noise_source=noise_source, workers=workers)
    if obstacle is not None:
        return "inprocess", f"sequential in-process engine ({obstacle})"
    convolutions = _conv_layers(config)
    if convolutions is None:
        return "inprocess", (
            "sequential in-process engine (custom data: the model is known only after the "
            "clients describe their data)"
        )
    if convolutions and config.batch_size > AUTO_MAX_CONV_BATCH:
        return "inprocess", (
            f"sequential in-process engine (a conv model at batch-size {config.batch_size} > "
            f"{AUTO_MAX_CONV_BATCH} is compute-bound: batching is slower)"
        )
    kind = "conv model" if convolutions else "no conv layers"
    return "batched", f"batched engine ({kind}, batch-size {config.batch_size}: faster batched)"


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


def _conv_layers(config: RunConfig) -> int | None:
    """How many conv layers the run's model has (None: not known before the run)."""
    from torch import nn

    from fedmodel.data import DATASETS, data_shape
    from fedmodel.models import build_model

    if DATASETS.get(config.dataset).own_data:
        return None
    input_shape, num_classes = data_shape(config)
    try:
        from fedmodel.models import model_settings  # type: ignore[attr-defined]

        model = build_model(
            config.model,
            input_shape=input_shape,
            num_classes=num_classes,
            settings=model_settings(config),
        )
    except ImportError:  # before model settings landed
        model = build_model(
            config.model,
            input_shape=input_shape,
            num_classes=num_classes,
            hidden_sizes=config.hidden_layer_sizes,
        )
    return sum(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
