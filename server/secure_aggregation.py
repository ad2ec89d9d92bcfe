"""Secure aggregation on the server: SecAgg+ through Flower's own ``SecAggPlusWorkflow``.

SecAgg+ (Bell, Bonawitz, Gascón, Lepoint & Raykova 2020, "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead", CCS) lets the server learn the sum of
the sampled clients' weighted models and nothing else about any one of them, as long
as fewer than ``secagg-reconstruction-threshold`` of a client's neighbours collude
with it. Flower 1.42 offers it on its legacy path only: a ``LegacyContext`` with a
legacy ``flwr.server.strategy.FedAvg`` driven by ``DefaultWorkflow(fit_workflow=
SecAggPlusWorkflow(...))``; the clients run ``secaggplus_mod``
(:mod:`client.secure_aggregation`). This module runs that, with no cryptography of
its own, and keeps what the run records the same as without it: every client's ledger
(:class:`~server.strategies.client_tracking.ClientTracking`), the failures, the round
lines, central evaluation and the run folder (:class:`~server.round_recorder.RoundRecorder`).

What the server can still check, and what not:

- Each client's privacy ledger travels in the clear beside its masked vector and is
  checked before the masks are removed (:class:`LedgerCheckingGrid`): a reply whose
  ledger is missing, malformed or lost steps is turned into a dropout, so the
  protocol recovers its masks and its update is not in the sum.
- Nothing about one update: not its norm, its finiteness, its shapes or values. So
  robust strategies, ``max-update-norm``, Byzantine simulations and compressed updates
  are refused up front (``fedmodel.config``); only the sum is checked (finite).
- The aggregate is FedAvg's example-weighted mean (under user-level DP every weight is
  1 and the update is divided by ``m``), up to Flower's quantization: each
  client's ``(w / max_weight) * weights`` is stochastically rounded to a grid of step
  ``2 * 8 / 2**22`` (clipping range 8, quantization range 2**22), so the mean is off
  by at most ``k * 2 * 8 / 2**22 / sum(w / max_weight)`` per value for ``k`` survivors
  (:func:`quantization_tolerance`).

Under user-level DP (``privacy-unit = "user"`` or ``"both"``, fixed clipping, fixed
cohort) DP-FedAvg (McMahan et al. 2018) composes with SecAgg+ as central DP applied
after unmasking (not distributed DP): each client clips its own update to ``C`` before
masking it (Flower's legacy ``fixedclipping_mod``, driven by
``DifferentialPrivacyClientSideFixedClipping``, which also adds the noise) and sends it
with weight 1; the server unmasks the sum of the survivors' clipped models, divides the
update by the expected cohort ``m`` (a dropout counts as a zero update,
:class:`TrackedFedAvg`), adds Gaussian noise ``z * C / m`` and composes the round in the
same accountant as the Message-API path (:class:`UserLevelSecAgg`, reusing
:class:`~server.strategies.user_level_dp.UserLevelDP`'s).

Flower 1.42's mask generator folds each secret into a 32-bit seed for NumPy's Mersenne
Twister (flwrlabs/flower#7522, open): the masks are far weaker than the protocol's
cryptography (README, "Secure aggregation"); it is Flower's to fix.

A round in which some node keeps fewer than ``secagg-reconstruction-threshold``
neighbours that answered is halted by Flower ("Secure aggregation halted"): the global
model is kept and the round line says why. Runs under secure aggregation write no
checkpoints (``resume`` is refused).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterable
from dataclasses import dataclass
from logging import WARNING
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    NDArrays,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.constant import ErrorCode
from flwr.common.logger import log
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.default_workflows import default_evaluate_workflow
from flwr.serverapp import Grid

from fedmodel.config import ConfigError, RunConfig
from fedmodel.data import partition_sizes
from fedmodel.privacy.sampling_plan import steps_per_epoch_for
from fedmodel.records import serialized_size
from server.delegating_grid import DelegatingGrid
from server.round_recorder import RoundRecorder
from server.strategies.client_tracking import ClientTracking
from server.strategies.user_level_dp import UserLevelDP, scale_update, user_level_layer

SECAGG_USER_MECHANISM = (
    "DP-FedAvg with SecAgg+ (McMahan et al. 2018; Bell et al. 2020): each client clips its "
    "own update to C before masking (Flower's fixedclipping_mod), equal weights, the "
    "server unmasks the sum, divides it by the expected cohort m and adds Gaussian noise "
    "z * C / m (central DP after unmasking, not distributed DP); a dropped or rejected "
    "client counts as a zero update"
)

# Flower's SecAggPlusWorkflow defaults, named here for the tolerance and the README.
CLIPPING_RANGE = 8.0
QUANTIZATION_RANGE = 2**22
MODULUS_RANGE = 2**32
ARRAY_NAMES_KEY = "array-names"  # as client/secure_aggregation.py reads it
STAGE_NAMES = {
    Stage.SETUP: "setup",
    Stage.SHARE_KEYS: "share keys",
    Stage.COLLECT_MASKED_VECTORS: "masked vectors",
    Stage.UNMASK: "unmask",
}


def cohort_size(config: RunConfig, *, num_nodes: int) -> int:
    """How many nodes a round samples (as Flower's FedAvg, legacy and Message API)."""
    return max(int(num_nodes * config.fraction_train), config.min_train_replies)


def quantization_tolerance(weights: Iterable[float], *, max_weight: float) -> float:
    """Bound on ``|secure mean - FedAvg mean|`` per value, for the survivors' ``weights``.

    Each survivor's ``r * x`` (``r = w / max_weight``) is stochastically rounded to a
    grid of step ``2 c / R`` (Flower's ``quantize``: clipping range ``c``, quantization
    range ``R``): an error below one step each, ``k`` steps in the sum, divided by the
    sum of the ``r`` when the mean is taken.
    """
    ratios = [w / max_weight for w in weights]
    return len(ratios) * 2 * CLIPPING_RANGE / QUANTIZATION_RANGE / sum(ratios)


@dataclass(frozen=True)
class SecureAggregation:
    """The SecAgg+ settings of a run, checked against the federation before round 1.

    Parameters
    ----------
    config : RunConfig
        The run config (``secure-aggregation = true``).
    num_nodes : int
        Connected nodes; a round samples :func:`cohort_size` of them.
    max_weight : float
        The largest weight (``num-examples``) a client may send: Flower scales every
        update by ``w / max_weight`` before quantizing, so a tight bound keeps the
        quantization error small (:func:`quantization_tolerance`).
    """

    config: RunConfig
    num_nodes: int
    max_weight: float

    def __post_init__(self) -> None:
        cohort = cohort_size(self.config, num_nodes=self.num_nodes)
        shares = self.config.secagg_num_shares
        if cohort < 3:
            raise ConfigError(
                f"secure-aggregation = true needs at least 3 sampled nodes per round; "
                f"{self.num_nodes} connected with fraction-train = {self.config.fraction_train} "
                f"sample {cohort}"
            )
        if shares > cohort:
            raise ConfigError(
                f"run-config key 'secagg-num-shares' = {shares} is out of range: must be <= "
                f"the {cohort} nodes a round samples ({self.num_nodes} connected, "
                f"fraction-train = {self.config.fraction_train})"
            )
        if shares % 2 == 0 and shares != cohort:
            # Flower would warn and silently use one share more.
            raise ConfigError(
                f"run-config key 'secagg-num-shares' = {shares} is out of range: must be odd "
                f"(or equal to the {cohort} nodes a round samples)"
            )
        if self.max_weight <= 0:
            raise ValueError(f"max_weight must be > 0, got {self.max_weight}")

    @classmethod
    def for_run(
        cls, config: RunConfig, *, num_nodes: int, client_sizes: Iterable[int] | None = None
    ) -> SecureAggregation:
        """Settings for ``num_nodes`` nodes whose training sets have ``client_sizes``.

        Without sizes (a built-in dataset) they are the partitions' sizes. Under DP a
        client's weight is ``ceil(N / B) * B`` (``client/client_app.py``); a client
        whose weight exceeds ``max_weight`` refuses rather than be clipped.
        """
        if client_sizes is None:
            client_sizes = partition_sizes(config, num_partitions=num_nodes)
        if config.privacy_unit != "record":  # DP-FedAvg: equal weights, every client sends 1
            return cls(config=config, num_nodes=num_nodes, max_weight=1.0)
        sizes = list(client_sizes)
        if config.dp:
            sizes = [steps_per_epoch_for(n, config.batch_size) * config.batch_size for n in sizes]
        return cls(config=config, num_nodes=num_nodes, max_weight=float(max(sizes, default=1)))

    def line(self) -> str:
        """What the run does, for the log."""
        config = self.config
        return (
            f"Secure aggregation: SecAgg+ (Flower's SecAggPlusWorkflow), "
            f"{config.secagg_num_shares} shares, reconstruction threshold "
            f"{config.secagg_reconstruction_threshold}; the server sees only the sum of "
            f"the updates; max weight {self.max_weight:g}; no checkpoints"
            + (
                "; user-level DP: clients clip to user-clipping-norm before masking, the "
                "server adds the noise after unmasking"
                if config.privacy_unit != "record"
                else ""
            )
        )

    def run(
        self,
        grid: Grid,
        context: Context,
        *,
        tracking: ClientTracking,
        recorder: RoundRecorder,
        initial_arrays: ArrayRecord,
        train_config: ConfigRecord,
    ) -> None:
        """Run every round through Flower's ``DefaultWorkflow`` with SecAgg+ training."""
        print(self.line(), flush=True)
        config = self.config
        layer = user_level_layer(tracking)  # the run's user-level accountant, if any
        tracked = TrackedFedAvg(
            tracking=tracking,
            recorder=recorder,
            initial_arrays=initial_arrays,
            train_config=train_config,
            fraction_evaluate=float(getattr(tracking.strategy, "fraction_evaluate", 0.0)),
            cohort_size=layer.plan.clients_per_round if layer is not None else 0,
        )
        strategy: LegacyStrategy = tracked
        if layer is not None:
            strategy = UserLevelSecAgg(tracked, layer=layer)
        legacy = LegacyContext(
            context,
            config=ServerConfig(num_rounds=config.num_server_rounds),
            strategy=strategy,
        )
        secure = SecAggPlusWorkflow(
            num_shares=config.secagg_num_shares,
            reconstruction_threshold=config.secagg_reconstruction_threshold,
            max_weight=self.max_weight,
            clipping_range=CLIPPING_RANGE,
            quantization_range=QUANTIZATION_RANGE,
            modulus_range=MODULUS_RANGE,
            timeout=config.round_timeout,  # per stage
        )

        def train_then_evaluate(grid: Grid, context: Context) -> None:
            # The Message API's order: the clients evaluate before the central evaluation
            # records the round (DefaultWorkflow would ask them after it).
            secure(grid, context)
            default_evaluate_workflow(grid, context)

        workflow = DefaultWorkflow(
            fit_workflow=train_then_evaluate, evaluate_workflow=lambda grid, context: None
        )
        workflow(LedgerCheckingGrid(grid, tracking=tracking), legacy)


class LedgerCheckingGrid(DelegatingGrid):
    """Check each masked-vector reply's ledger before the workflow sums it; note failures.

    A reply whose ledger :class:`ClientTracking` does not accept becomes an error reply,
    so SecAgg+ treats its node as dropped out and removes its masks from the sum
    without its vector. Every error reply, and every message left unanswered within the
    workflow's timeout, is a failure of the round, named with its stage.
    """

    def __init__(self, grid: Grid, *, tracking: ClientTracking) -> None:
        super().__init__(grid)
        self.tracking = tracking

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        # One content per message: the workflow shares one among all nodes at setup, and
        # Flower's mod changes what it receives (a runtime that serialises never shares).
        sent = [
            Message(
                content=copy.deepcopy(m.content),
                dst_node_id=m.metadata.dst_node_id,
                message_type=m.metadata.message_type,
                group_id=m.metadata.group_id,
            )
            for m in messages
        ]
        stage = _stage(sent)  # before sending: an in-process node may change what it gets
        replies = list(self.grid.send_and_receive(sent, timeout=timeout))
        by_id = {m.metadata.message_id: m for m in sent}
        answered = {r.metadata.reply_to_message_id for r in replies}
        tracking, checked = self.tracking, []
        for reply in replies:
            node_id = reply.metadata.src_node_id
            original = by_id.get(reply.metadata.reply_to_message_id)
            if original is not None:
                node_id = original.metadata.dst_node_id  # the SuperLink may answer for it
            if not reply.has_error():
                tracking.last_round_bytes += serialized_size(reply.content)
                tracking.last_round_uncompressed_bytes = tracking.last_round_bytes
            if stage == Stage.COLLECT_MASKED_VECTORS:
                if tracking._accept(reply, node_id):
                    tracking.last_round_trained += 1  # a masked vector to be summed
                elif not reply.has_error() and original is not None:
                    reason = f"ledger rejected: {tracking.last_round_failures[-1]}"
                    reply = Message(Error(code=ErrorCode.UNKNOWN, reason=reason), reply_to=original)
            elif reply.has_error():
                name = STAGE_NAMES.get(stage, stage)
                tracking.last_round_failures.append(
                    f"node {node_id}: {reply.error.reason} (SecAgg+ stage {name})"
                )
            checked.append(reply)
        waited = f" within {timeout:g} s" if timeout else ""
        for message in sent:
            if message.metadata.message_id not in answered:
                tracking.last_round_failures.append(
                    f"node {message.metadata.dst_node_id}: no reply{waited} "
                    f"(SecAgg+ stage {STAGE_NAMES.get(stage, stage)})"
                )
        return checked


def _stage(messages: list[Message]) -> str:
    for message in messages:
        configs = message.content.config_records.get(RECORD_KEY_CONFIGS)
        if configs is not None and Key.STAGE in configs:
            return str(configs[Key.STAGE])
    return ""


class TrackedFedAvg(LegacyFedAvg):
    """Flower's legacy FedAvg that keeps :class:`ClientTracking`'s record of each round.

    The workflow hands ``aggregate_fit`` the survivors' FitRes, each carrying the
    unmasked weighted mean already; FedAvg's mean of equal arrays is that mean. This
    class adds what the run records: how many updates the round kept, whether the
    global model changed and why not (fewer than ``min-train-replies``, the protocol
    halted), the clients' aggregated metrics, and the central evaluation of every
    round (the :class:`RoundRecorder`), which also writes the run folder.

    With ``cohort_size`` m > 0 (user-level DP, inside :class:`UserLevelSecAgg`) it samples
    exactly m nodes with ``random.SystemRandom`` and turns the survivors' equal-weight
    mean into ``global + sum(clipped update) / m`` (McMahan et al. 2018's fixed
    denominator), before Flower's wrapper adds the noise.
    """

    def __init__(
        self,
        *,
        tracking: ClientTracking,
        recorder: RoundRecorder,
        initial_arrays: ArrayRecord,
        train_config: ConfigRecord,
        fraction_evaluate: float,
        cohort_size: int = 0,
    ) -> None:
        config = recorder.config
        # User-level DP (> 0): m, the fixed denominator; the cohort is drawn with
        # SystemRandom, as the Message-API path's CohortSampling (not the seeded `random`).
        self.cohort_size = cohort_size
        self._global: NDArrays = []
        # A round samples cohort_size() nodes while enough are connected (checked before
        # round 1); it waits only until the fewest SecAgg+ and min-train-replies need.
        fewest = max(config.secagg_num_shares, config.min_train_replies)
        self.tracking, self.recorder = tracking, recorder
        self.names = list(initial_arrays.keys())
        state = initial_arrays.to_torch_state_dict()
        self.dtypes = [state[name].numpy().dtype for name in self.names]
        self.train_config = dict(train_config)
        self.aggregated = True
        super().__init__(
            fraction_fit=config.fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_fit_clients=fewest,
            min_evaluate_clients=1,
            min_available_clients=fewest,
            initial_parameters=ndarrays_to_parameters([state[name].numpy() for name in self.names]),
            on_fit_config_fn=self._round_config,
            on_evaluate_config_fn=self._round_config,
            evaluate_fn=self._evaluate,
            fit_metrics_aggregation_fn=_weighted_mean,
            evaluate_metrics_aggregation_fn=_weighted_mean,
        )

    def _round_config(self, server_round: int) -> dict[str, Scalar]:
        # Lists are fine in the ConfigRecord they travel in; the client reads it directly.
        config: dict[str, Any] = {
            **self.train_config,
            "server-round": server_round,
            ARRAY_NAMES_KEY: self.names,
        }
        return config

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, Any]]:
        tracking = self.tracking
        tracking.last_round_failures, tracking.last_round_rejections = [], []
        tracking.last_round_epsilons = {}
        tracking.last_round_bytes = tracking.last_round_uncompressed_bytes = 0
        tracking.last_round_trained, tracking.last_train_metrics = 0, None
        tracking.last_round_updated = False
        self.aggregated = False  # until the workflow gets as far as aggregate_fit
        if not self.cohort_size:
            return super().configure_fit(server_round, parameters, client_manager)
        self._global = parameters_to_ndarrays(parameters)
        fit_ins = FitIns(parameters, self._round_config(server_round))
        available = list(client_manager.all().values())
        if len(available) < self.cohort_size:  # accounted for m of N: never fewer
            tracking.last_round_failures.append(
                f"{len(available)} nodes connected, fewer than the cohort m = {self.cohort_size}"
            )
            return []
        chosen = random.SystemRandom().sample(available, self.cohort_size)
        return [(client, fit_ins) for client in chosen]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        self.aggregated = True
        tracking = self.tracking
        tracking.last_round_trained = len(results)
        if len(results) < tracking.min_train_replies:
            log(
                WARNING,
                "Round %s: %s of at least %s updates arrived; the global model is unchanged",
                server_round,
                len(results),
                tracking.min_train_replies,
            )
            tracking._unchanged("")  # unchanged_reason says how many arrived
            return None, {}
        parameters, metrics = super().aggregate_fit(server_round, results, failures)
        if parameters is None:
            tracking._unchanged("FedAvg aggregated nothing")
            return None, {}
        # Flower dequantizes to float64: back to the model's own dtypes.
        arrays = [
            a.astype(dtype, copy=False)
            for a, dtype in zip(parameters_to_ndarrays(parameters), self.dtypes, strict=True)
        ]
        if self.cohort_size:
            # The survivors' equal-weight mean becomes global + sum(update) / m: McMahan
            # et al.'s fixed denominator, a dropout counting as a zero update.
            scale = len(results) / self.cohort_size
            arrays = [scale_update(a, g, scale) for a, g in zip(arrays, self._global, strict=True)]
        if not all(np.isfinite(a).all() for a in arrays if a.dtype.kind == "f"):
            tracking._unchanged("the aggregate is not finite")
            return None, {}
        tracking.last_round_updated, tracking._kept_because = True, ""
        tracking.last_train_metrics = MetricRecord(metrics) if metrics else None  # type: ignore[arg-type]
        return ndarrays_to_parameters(arrays), metrics

    def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> Any:
        loss, metrics = super().aggregate_evaluate(server_round, results, failures)
        self.tracking.last_evaluate_metrics = MetricRecord(metrics) if metrics else None  # type: ignore[arg-type]
        return loss, metrics

    def _evaluate(
        self, server_round: int, ndarrays: NDArrays, _config: dict[str, Scalar]
    ) -> tuple[float, dict[str, Scalar]]:
        """Central evaluation after every round; the round's record when it was halted."""
        if server_round > 0 and not self.aggregated:
            threshold = self.recorder.config.secagg_reconstruction_threshold
            self.tracking._unchanged(
                "secure aggregation halted: a node kept fewer than "
                f"{threshold} answering neighbours (secagg-reconstruction-threshold)"
            )
        arrays = ArrayRecord(
            {
                name: torch.from_numpy(np.asarray(a, dtype=dtype))
                for name, a, dtype in zip(self.names, ndarrays, self.dtypes, strict=True)
            }
        )
        metrics = self.recorder(server_round, arrays)
        return float(metrics["test-loss"]), dict(metrics)  # type: ignore[arg-type]


class UserLevelSecAgg(LegacyStrategy):
    """DP-FedAvg over SecAgg+: Flower's client-side fixed-clipping wrapper, accounted.

    Wraps ``DifferentialPrivacyClientSideFixedClipping(tracked)``, which sends the
    clipping norm to the clients' ``fixedclipping_mod`` and adds noise ``z * C / m`` to
    :class:`TrackedFedAvg`'s fixed-denominator mean. Around it, the Message-API path's
    accounting (``layer``, a :class:`~server.strategies.user_level_dp.UserLevelDP`):
    the budget is checked before a round samples anyone, and every round is composed.

    Two choices differ from Flower's wrapper, both on the safe side:

    - the wrapper releases nothing when any client failed; here the dropouts are zero
      updates (the denominator is ``m`` whatever arrived), so it is handed no failures
      (each one is already named by :class:`LedgerCheckingGrid`);
    - a round that released no noised aggregate (the protocol halted, or the sum was not
      finite) is composed all the same: the global model is unchanged, so this only
      over-counts ε, and every round's ε matches the Message-API path's for as many rounds.
    """

    def __init__(self, tracked: TrackedFedAvg, *, layer: UserLevelDP) -> None:
        plan = layer.plan
        if plan.clipping != "fixed" or plan.sampling != "fixed":
            raise ConfigError(
                "secure-aggregation = true with user-level DP needs user-clipping = 'fixed' "
                "and client-sampling = 'fixed'"
            )
        self.strategy = DifferentialPrivacyClientSideFixedClipping(
            tracked,
            noise_multiplier=plan.noise_multiplier,
            clipping_norm=plan.clipping_norm,
            num_sampled_clients=plan.clients_per_round,
        )
        self.tracked, self.layer = tracked, layer
        layer.mechanism = SECAGG_USER_MECHANISM
        self._composed_round = 0

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.strategy.initialize_parameters(client_manager)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self.layer.check_budget(server_round)  # raises UserBudgetReached: nobody trains
        return self.strategy.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        aggregated = self.strategy.aggregate_fit(server_round, results, [])
        self._compose(server_round, updates=len(results))
        return aggregated

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return self.strategy.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return self.strategy.aggregate_evaluate(server_round, results, failures)

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        # After every round, halted or not: compose before the round line reads ε.
        if server_round > 0:
            self._compose(server_round, updates=0)
        return self.strategy.evaluate(server_round, parameters)

    def _compose(self, server_round: int, *, updates: int) -> None:
        if self._composed_round == server_round:
            return
        self._composed_round = server_round
        self.layer.record_release(
            server_round, updates=updates, clipping_norm=self.layer.plan.clipping_norm
        )


def _weighted_mean(results: list[tuple[int, dict[str, Scalar]]]) -> dict[str, Scalar]:
    """The clients' metrics weighted by their example counts (as Flower's Message API)."""
    total = sum(n for n, _ in results)
    if not total:
        return {}
    keys = set.intersection(*(set(m) for _, m in results)) - {"num-examples"}
    return {
        key: sum(n * float(m[key]) for n, m in results) / total  # type: ignore[arg-type]
        for key in sorted(keys)
        if all(isinstance(m[key], int | float) for _, m in results)
    }
