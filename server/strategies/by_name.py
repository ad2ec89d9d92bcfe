"""Flower's strategies by the run config's ``strategy`` name, with their parameters.

The names, the run-config keys each strategy reads and the papers are the domain's
(:data:`fedmodel.strategies.STRATEGIES`); this module maps them onto Flower's classes in
``flwr.serverapp.strategy``. None of the aggregation is re-implemented here: every
strategy is Flower's own, built with the run config's parameters. A parameter of 0 for
``server-learning-rate``, ``tau``, ``beta-1`` or ``beta-2`` is left out, so Flower's
default for that strategy applies (e.g. FedAdam's ``eta = 0.1``, FedYogi's ``eta = 0.01``).

Each class is Flower's with one addition, :class:`KeepsModelDtypes`: the aggregate keeps
the dtypes of the global model it updates (Flower's FedAdam and q-FedAvg return float64
arrays for a float32 model, through NumPy 2's promotion by float64 scalars, which would
make the global model, ``model.pt`` and every later round float64).

The Byzantine-robust rules need enough updates per round for their guarantees, which
Flower does not check before training (Bulyan skips aggregation round after round with
a warning; Krum quietly scores against fewer neighbours):
:func:`check_federation_size` turns them into a :class:`~fedmodel.config.ConfigError`
raised before round 1.

References
----------
McMahan et al. 2017, Communication-Efficient Learning of Deep Networks from
Decentralized Data (AISTATS). Hsu et al. 2019, Measuring the Effects of Non-Identical
Data Distribution for Federated Visual Classification. Li et al. 2020, Federated
Optimization in Heterogeneous Networks (MLSys). Reddi et al. 2021, Adaptive Federated
Optimization (ICLR). Yin et al. 2018, Byzantine-Robust Distributed Learning: Towards
Optimal Statistical Rates (ICML). Blanchard et al. 2017, Machine Learning with
Adversaries: Byzantine Tolerant Gradient Descent (NeurIPS). El Mhamdi et al. 2018, The
Hidden Vulnerability of Distributed Learning in Byzantium (ICML). Li et al. 2020, Fair
Resource Allocation in Federated Learning (ICLR).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    QFedAvg,
)

from fedmodel.config import ConfigError, RunConfig
from fedmodel.strategies import STRATEGIES


class KeepsModelDtypes(FedAvg):
    """Mixin for a Flower strategy: the aggregate has the dtypes of the model sent.

    It records the dtype of every array of the global model in ``configure_train`` and
    casts the arrays ``aggregate_train`` returns back to them; an aggregate that already
    has them is returned as it is (bit for bit). The aggregation itself is the strategy's.
    """

    _sent_dtypes: dict[str, str] | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._sent_dtypes = {key: array.dtype for key, array in arrays.items()}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)
        dtypes = self._sent_dtypes or {}
        if arrays is None or all(
            array.dtype == dtypes.get(key, array.dtype) for key, array in arrays.items()
        ):
            return arrays, metrics
        cast = {
            key: Array(array.numpy().astype(dtypes.get(key, array.dtype)))
            for key, array in arrays.items()
        }
        return ArrayRecord(cast), metrics


def _keeping_dtypes(flower_class: type[FedAvg]) -> type[FedAvg]:
    """``flower_class`` with :class:`KeepsModelDtypes` in front (same name)."""
    return type(flower_class.__name__, (KeepsModelDtypes, flower_class), {"__module__": __name__})


# Flower's class for each name of fedmodel.strategies.STRATEGIES.
FLOWER_CLASSES: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg,
    "fedavgm": FedAvgM,
    "fedprox": FedProx,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
    "multikrum": MultiKrum,
    "bulyan": Bulyan,
    "qfedavg": QFedAvg,
}
# What build_strategy instantiates: each of them, keeping the model's dtypes.
STRATEGY_CLASSES: dict[str, type[FedAvg]] = {
    name: _keeping_dtypes(flower_class) for name, flower_class in FLOWER_CLASSES.items()
}

# The Flower keyword argument each run-config key becomes, per strategy (the keys are
# exactly what fedmodel.strategies.STRATEGIES says the strategy reads; a test checks).
_ADAPTIVE = {"server-learning-rate": "eta", "tau": "tau", "beta-1": "beta_1", "beta-2": "beta_2"}
FLOWER_PARAMETERS: dict[str, dict[str, str]] = {
    "fedavg": {},
    "fedavgm": {
        "server-learning-rate": "server_learning_rate",
        "server-momentum": "server_momentum",
    },
    "fedprox": {"proximal-mu": "proximal_mu"},
    "fedadam": _ADAPTIVE,
    "fedyogi": _ADAPTIVE,
    "fedadagrad": {"server-learning-rate": "eta", "tau": "tau"},
    "fedmedian": {},
    "fedtrimmedavg": {"trim-beta": "beta"},
    "krum": {"num-malicious-nodes": "num_malicious_nodes"},
    "multikrum": {
        "num-malicious-nodes": "num_malicious_nodes",
        "num-nodes-to-select": "num_nodes_to_select",
    },
    "bulyan": {"num-malicious-nodes": "num_malicious_nodes"},
    "qfedavg": {"q-fair": "q"},
}
# Keys whose 0 means "Flower's default for this strategy" (left out of the call).
ZERO_IS_FLOWER_DEFAULT = frozenset({"server-learning-rate", "tau", "beta-1", "beta-2"})
# The metric non-DP clients send their mean training loss under (client/client_app.py).
TRAIN_LOSS_KEY = "train-loss"


def strategy_arguments(config: RunConfig) -> dict[str, Any]:
    """Flower's keyword arguments for ``config.strategy`` from its run-config parameters.

    Parameters
    ----------
    config : RunConfig
        The validated run config.

    Returns
    -------
    dict
        The strategy-specific arguments only (not the sampling ones): a parameter of 0
        for a key in :data:`ZERO_IS_FLOWER_DEFAULT` is left out. q-FedAvg (Li et al.
        2020, ICLR) also gets the clients' learning rate, from which it estimates the
        Lipschitz constant ``L = 1 / lr``, and the name of the training-loss metric.
    """
    arguments: dict[str, Any] = {}
    for key, argument in FLOWER_PARAMETERS[config.strategy].items():
        value = getattr(config, key.replace("-", "_"))
        if key in ZERO_IS_FLOWER_DEFAULT and value == 0:
            continue
        arguments[argument] = value
    if config.strategy == "qfedavg":
        arguments.update(client_learning_rate=config.learning_rate, train_loss_key=TRAIN_LOSS_KEY)
    return arguments


def build_strategy(
    config: RunConfig,
    *,
    fraction_evaluate: float,
    min_train_nodes: int,
    min_evaluate_nodes: int,
    min_available_nodes: int,
) -> FedAvg:
    """Flower's strategy named by run-config ``strategy``, with its parameters.

    Parameters
    ----------
    config : RunConfig
        The validated run config: ``strategy``, its parameters (see
        :func:`strategy_arguments`) and ``fraction-train``.
    fraction_evaluate : float
        Fraction of nodes sampled for client-side evaluation (0: none).
    min_train_nodes, min_evaluate_nodes, min_available_nodes : int
        Flower's sampling minimums.

    Returns
    -------
    FedAvg
        An instance of Flower's class in :data:`FLOWER_CLASSES` (with
        :class:`KeepsModelDtypes`; every one of Flower's strategies here derives from
        ``FedAvg``).

    Raises
    ------
    ConfigError
        The strategy is not known (``RunConfig`` already refuses unknown names), FedProx's
        ``learning-rate * proximal-mu`` is 1 or more (the clients' proximal step would
        return them to the global model or past it), or Flower refuses its parameters.
    """
    if config.strategy not in STRATEGY_CLASSES:
        known = ", ".join(repr(name) for name in STRATEGY_CLASSES)
        raise ConfigError(
            f"run-config key 'strategy' = {config.strategy!r} is not known: must be one of {known}"
        )
    if config.strategy == "fedprox" and config.learning_rate * config.proximal_mu >= 1:
        raise ConfigError(
            f"run-config key 'proximal-mu' = {config.proximal_mu!r} is out of range: must be "
            f"below 1 / learning-rate = {1 / config.learning_rate:g} (each local step moves "
            "the weights learning-rate * proximal-mu of the way back to the global model; "
            "at 1 local training would return the global model unchanged)"
        )
    try:
        return STRATEGY_CLASSES[config.strategy](
            fraction_train=config.fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            **strategy_arguments(config),
        )
    except ValueError as error:  # e.g. FedTrimmedAvg's beta outside [0, 0.5)
        raise ConfigError(f"strategy {config.strategy!r}: {error}") from error


def updates_per_round(config: RunConfig, *, num_nodes: int, min_train_nodes: int) -> int:
    """How many nodes Flower's ``FedAvg.configure_train`` samples per round.

    ``max(int(num_nodes * fraction_train), min_train_nodes)``, as in Flower 1.42.
    """
    return max(int(num_nodes * config.fraction_train), min_train_nodes)


def required_updates(config: RunConfig) -> int:
    """Fewest updates per round the strategy's robustness argument needs (1: no bound).

    With ``f = num-malicious-nodes``:

    - Krum and Multi-Krum (Blanchard et al. 2017): ``n >= 2f + 3``, so that each update
      is scored against its ``n - f - 2 >= 1`` nearest neighbours (Flower silently
      uses ``max(1, n - f - 2)``). Multi-Krum's ``num-nodes-to-select`` ``m`` must be
      at most ``n - f``, so that the ``m`` selected can all be honest; hence
      ``n >= max(2f + 3, m + f)``.
    - Bulyan (El Mhamdi et al. 2018): ``n >= 4f + 3`` (Flower skips aggregation of a
      round with fewer replies, so the model would never change).
    """
    f = config.num_malicious_nodes
    if config.strategy == "krum":
        return 2 * f + 3
    if config.strategy == "multikrum":
        return max(2 * f + 3, config.num_nodes_to_select + f)
    if config.strategy == "bulyan":
        return 4 * f + 3
    return 1


def check_federation_size(config: RunConfig, *, num_nodes: int, min_train_nodes: int) -> None:
    """Refuse, before round 1, a federation too small for the robust strategy asked for.

    Parameters
    ----------
    config : RunConfig
        The validated run config.
    num_nodes : int
        Nodes connected now (``len(list(grid.get_node_ids()))``).
    min_train_nodes : int
        Flower's ``min_train_nodes`` (a floor on the per-round sample).

    Raises
    ------
    ConfigError
        Fewer updates per round than :func:`required_updates`; the message names the
        strategy, ``f``, the requirement, the node count and ``fraction-train``.
    """
    needed = required_updates(config)
    per_round = updates_per_round(config, num_nodes=num_nodes, min_train_nodes=min_train_nodes)
    sampled = min(per_round, num_nodes)
    if sampled >= needed:
        return
    f = config.num_malicious_nodes
    rule = {
        "krum": f"2 * num-malicious-nodes + 3 = 2 * {f} + 3",
        "multikrum": (
            f"max(2 * num-malicious-nodes + 3, num-nodes-to-select + num-malicious-nodes) "
            f"= max(2 * {f} + 3, {config.num_nodes_to_select} + {f})"
        ),
        "bulyan": f"4 * num-malicious-nodes + 3 = 4 * {f} + 3",
    }[config.strategy]
    paper = STRATEGIES.get(config.strategy).paper
    remedies = ["add nodes"]
    if config.fraction_train < 1:
        remedies.append("raise fraction-train")
    if f > 0:
        remedies.append("lower num-malicious-nodes")
    if config.strategy == "multikrum" and config.num_nodes_to_select > 1:
        remedies.append("lower num-nodes-to-select")
    raise ConfigError(
        f"strategy {config.strategy!r} needs at least {needed} updates per round ({rule}; "
        f"{paper}), but the federation has {num_nodes} node{'s' if num_nodes != 1 else ''} "
        f"and fraction-train = {config.fraction_train:g} samples {sampled} per round; "
        + ", ".join(remedies[:-1])
        + (" or " if len(remedies) > 1 else "")
        + remedies[-1]
    )


def strategy_line(config: RunConfig, strategy: FedAvg) -> str:
    """The log line naming the strategy, its paper and its parameters as Flower holds them.

    Parameters left at 0 in the run config show the value Flower chose for them.
    """
    values = ", ".join(
        f"{argument} {getattr(strategy, argument):g}"
        for argument in FLOWER_PARAMETERS[config.strategy].values()
    )
    paper = STRATEGIES.get(config.strategy).paper
    return f"strategy: {type(strategy).__name__} ({paper})" + (f": {values}" if values else "")
