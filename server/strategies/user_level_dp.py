"""User-level central DP (DP-FedAvg) around a strategy, accounted with sampling amplification.

The layers, outermost first (``ClientTracking`` wraps all of them, so every reply is
checked, decompressed and validated before it is clipped)::

    UserLevelDP                                  accounting, budget (this module)
      DifferentialPrivacyServerSide{Fixed,Adaptive}Clipping   Flower: clip to C, add noise
        EqualWeightMean                          fixed denominator m, equal weights (here)
          CohortSampling                         Poisson or fixed-size cohort
            FedAvg / FedProx                     Flower's, fraction_train = 1

Flower's wrappers clip each update to ``C`` and add noise of standard deviation
``z * C / m`` to what the strategy they wrap returns. For that noise to cover one client
the average must move by at most ``C / m`` when one client changes, which FedAvg's
example weighting breaks (weights [1000, 10, 10, 10, 10] make the effective noise
multiplier 0.21 instead of 1.0) and which an average over fewer than ``m`` replies
breaks too. :class:`EqualWeightMean` is McMahan et al. 2018's fixed-denominator
estimator: every reply weighs the same and the sum of the clipped updates is divided by
the expected cohort ``m``, whatever number arrived. **A missing, failed or rejected
reply therefore counts as a zero update** (the client kept the global model): the round
is still private at the accounted ε, merely less useful.

Flower's accounted mode (``accountant=`` on the fixed-clipping wrappers) accepts only
``SamplingMethod.NO_AMPLIFICATION`` and exactly ``m`` replies, so :class:`UserLevelDP`
composes the rounds itself with Flower's ``RdpAccountant`` (Google's ``dp_accounting``):
one ``GaussianPrivacyEvent`` per round that released a noised aggregate, Poisson
add/remove or without-replacement replace-one (``fedmodel.privacy.user_level``). Every
round releases and is composed: with no update (nobody sampled, every reply missing or
rejected) the release is the global model plus the noise alone, so each round is exactly
the accounted sampled Gaussian mechanism (a skipped round would reveal the cohort's size).

Only strategies whose aggregation is FedAvg's mean can carry the noise this way (the
noise is added to the strategy's output: after FedAdam's or FedAvgM's server step it
would no longer be ``z * C / m`` on the mean, and the robust rules are not means):
:func:`check_user_level_strategy` refuses the others before round 1.

References
----------
McMahan, Ramage, Talwar & Zhang 2018, Learning Differentially Private Recurrent Language
Models (ICLR), https://arxiv.org/abs/1710.06963. Andrew, Thakkar, McMahan & Ramaswamy
2021, Differentially Private Learning with Adaptive Clipping (NeurIPS).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import (
    GaussianPrivacyEvent,
    Grid,
    NeighboringRelation,
    PrivacyConfig,
    RdpAccountant,
    SamplingMethod,
)
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.supercore.differential_privacy import (
    CLIENTS_DISCREPANCY_WARNING,
    add_gaussian_noise_inplace,
)

from fedmodel.config import ConfigError, RunConfig
from fedmodel.privacy.user_level import (
    ACCOUNTANT,
    SAMPLING_METHOD,
    UserLevelPlan,
    expected_cohort,
    user_level_plan,
)
from fedmodel.results.privacy_report import USER_MECHANISM, USER_NOISE_SOURCE
from server.strategies.cohort_sampling import CohortSampling
from server.strategies.delegating import DelegatingStrategy

# The strategies whose aggregate_train is FedAvg's (weighted) mean: FedProx differs only
# in the clients' proximal term.
MEAN_STRATEGIES = ("fedavg", "fedprox")


class UserBudgetReached(Exception):
    """The next round's user-level ε would exceed run-config ``max-epsilon``."""


def check_user_level_strategy(config: RunConfig) -> None:
    """Refuse, before round 1, a strategy that central DP cannot be composed with."""
    if config.privacy_unit == "record" or config.strategy in MEAN_STRATEGIES:
        return
    raise ConfigError(
        f"strategy {config.strategy!r} cannot be combined with privacy-unit = "
        f"{config.privacy_unit!r}: user-level DP adds its noise to the strategy's mean of "
        f"clipped updates, which only {' and '.join(repr(s) for s in MEAN_STRATEGIES)} "
        "compute (a server optimiser's step or a robust rule would change the noise's "
        "scale); use one of those, or privacy-unit = 'record'"
    )


def rdp_accountant(plan: UserLevelPlan) -> RdpAccountant:
    """Flower's client-level RDP accountant (dp_accounting's default orders, 1.1 to 1024)
    for ``plan``'s sampling and neighbouring relation."""
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp_accounting's import chatter
    return RdpAccountant(
        PrivacyConfig(
            target_delta=plan.delta,
            population_size=plan.population,
            neighboring_relation=NeighboringRelation(plan.neighbouring_relation),
            sampling_method=SamplingMethod(SAMPLING_METHOD[plan.sampling]),
            max_epsilon=plan.max_epsilon or None,
        )
    )


class EqualWeightMean(DelegatingStrategy):
    """Every reply weighs 1 and the clipped updates' sum is divided by ``cohort_size``.

    Sits inside Flower's DP wrapper, so it sees updates already clipped. With ``n``
    replies it scales each update by ``n / m`` and lets the wrapped strategy average
    them with equal weights: ``global + sum(update) / m`` (McMahan et al. 2018's
    fixed-denominator estimator), the same as padding the missing ``m - n`` with zero
    updates, and still right when Poisson sampling brings more than ``m``.
    """

    def __init__(self, strategy: Strategy, *, cohort_size: int) -> None:
        if cohort_size < 1:
            raise ValueError(f"cohort_size must be >= 1, got {cohort_size}")
        self.strategy = strategy
        self.cohort_size = cohort_size
        self.weighted_by_key = getattr(strategy, "weighted_by_key", "num-examples")
        self._global: dict[str, np.ndarray] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = {key: array.numpy() for key, array in arrays.items()}
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        if not replies:
            return None, None
        scale = len(replies) / self.cohort_size
        return self.strategy.aggregate_train(
            server_round, [self._equal_weight(reply, scale) for reply in replies]
        )

    def _equal_weight(self, reply: Message, scale: float) -> Message:
        content = RecordDict()
        for key, record in reply.content.items():
            if isinstance(record, ArrayRecord):
                record = ArrayRecord(
                    {
                        name: Array(scale_update(array.numpy(), self._global.get(name), scale))
                        for name, array in record.items()
                    }
                )
            elif isinstance(record, MetricRecord) and self.weighted_by_key in record:
                record = MetricRecord({**dict(record), self.weighted_by_key: 1})
            content[key] = record
        return Message(metadata=reply.metadata, content=content)


def scale_update(weights: np.ndarray, base: np.ndarray | None, scale: float) -> np.ndarray:
    """``base + scale * (weights - base)`` in the weights' dtype (no base: unchanged)."""
    if base is None or base.shape != weights.shape or scale == 1:
        return weights
    return (base + scale * (weights - base)).astype(weights.dtype, copy=False)


class UserLevelDP(DelegatingStrategy):
    """Compose each noised round into the user-level ε; stop before the budget is spent.

    Parameters
    ----------
    strategy : Strategy
        Flower's server-side DP wrapper (fixed or adaptive clipping) around
        :class:`EqualWeightMean`.
    plan : UserLevelPlan
        The mechanism and its accounting model.
    """

    def __init__(self, strategy: Strategy, *, plan: UserLevelPlan) -> None:
        self.strategy = strategy
        self.plan = plan
        # Shared, never copied: ClientTracking deep-copies its strategy's state each round
        # and restores it after an unfit aggregate; a noised aggregate that was computed
        # stays composed even when it is not adopted.
        self._ledger = _Composed(accountant=rdp_accountant(plan), rounds=[])
        self.event = GaussianPrivacyEvent(
            noise_multiplier=plan.accounted_noise_multiplier,
            sample_size=plan.clients_per_round,
            population_size=plan.population,
        )
        self.last_round_released = False
        self._global = ArrayRecord()  # the global model this round's replies update
        self.mechanism = USER_MECHANISM  # the SecAgg+ path names its client-side clipping

    @property
    def accountant(self) -> RdpAccountant:
        """Flower's RDP accountant holding every composed round."""
        return self._ledger.accountant

    @property
    def rounds(self) -> list[dict[str, Any]]:
        """One entry per composed round: round, updates, clipping norm, noise std, ε."""
        return self._ledger.rounds

    # -- what the wrapper adds ------------------------------------------------------

    @property
    def rounds_composed(self) -> int:
        return self.accountant.num_releases

    def epsilon(self) -> float:
        """User-level ε at the plan's δ over every composed round (0 before the first)."""
        if not self.rounds_composed:
            return 0.0
        return float(self.accountant.get_epsilon(self.plan.delta))

    def describe(self) -> str:
        """ε with δ, the accountant, the unit and what was composed."""
        return self.plan.describe(epsilon=self.epsilon(), rounds=self.rounds_composed)

    @property
    def clipping_norm(self) -> float:
        """The clipping norm now (the adaptive one moves every round)."""
        return float(getattr(self.strategy, "clipping_norm", self.plan.clipping_norm))

    def report(self) -> dict[str, Any]:
        """The mechanism and what it has spent, for the run folder's privacy report."""
        plan = self.plan
        return {
            "unit": "user-level: one client's whole data and participation, for the federation",
            "mechanism": self.mechanism,
            "describe": self.describe(),
            "epsilon": self.epsilon(),
            "delta": plan.delta,
            "accountant": ACCOUNTANT,
            "noise_multiplier": plan.noise_multiplier,
            "clipping": plan.clipping,
            "clipping_norm": plan.clipping_norm,
            "clipping_norm_now": self.clipping_norm,
            "clients_per_round": plan.clients_per_round,
            "population": plan.population,
            "client_sample_rate": plan.sample_rate,
            "sampling": plan.sampling,
            "neighbouring_relation": plan.neighbouring_relation,
            "accounted_noise_multiplier": plan.accounted_noise_multiplier,
            "rounds_composed": self.rounds_composed,
            "composed": "one Gaussian event per round that released a noised aggregate",
            "max_epsilon": plan.max_epsilon,
            "noise_source": USER_NOISE_SOURCE,
            "per_round": list(self.rounds),
        }

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs: the accountant's events and the rounds' record."""
        return {
            "accountant": self.accountant.state_dict(),
            "rounds": list(self.rounds),
            "clipping_norm": self.clipping_norm,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._ledger.accountant = rdp_accountant(self.plan)
        self.accountant.load_state_dict(state["accountant"])
        self._ledger.rounds[:] = list(state["rounds"])
        if hasattr(self.strategy, "clipping_norm"):
            self.strategy.clipping_norm = float(state["clipping_norm"])

    def check_budget(self, server_round: int) -> None:
        """Raise :class:`UserBudgetReached` if round ``server_round`` would take ε past
        ``max-epsilon`` (no side effects). Also used by the SecAgg+ path
        (``server/secure_aggregation.py``), which runs the rounds outside this strategy."""
        if self.plan.max_epsilon and self.accountant.would_exceed(
            self.event, max_epsilon=self.plan.max_epsilon
        ):
            raise UserBudgetReached(
                f"stopping before round {server_round}: it would take the user-level ε past "
                f"max-epsilon = {self.plan.max_epsilon:g} (now {self.describe()})"
            )

    def record_release(self, server_round: int, *, updates: int, clipping_norm: float) -> None:
        """Compose one noised round (the plan's event) and record it. Also used by the
        SecAgg+ path, whose noise is added by Flower's legacy client-side-clipping wrapper."""
        self._compose()
        noise = getattr(self.strategy, "noise_multiplier", self.plan.noise_multiplier)
        self.rounds.append(
            {
                "round": server_round,
                "updates": updates,
                "clipping_norm": clipping_norm,
                "noise_std": float(noise) * clipping_norm / self.plan.clients_per_round,
                "epsilon": self.epsilon(),
            }
        )

    # -- Strategy interface ---------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = arrays
        self.check_budget(server_round)
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        clipping_norm = self.clipping_norm  # the norm this round clips with
        # Flower's clipping divides by the update's norm: a reply that returns the global
        # model unchanged raises ZeroDivisionError there. A zero update adds nothing to the
        # sum and the denominator is m whatever arrives, so leaving it out is exact for
        # fixed clipping (adaptive clipping's clipped fraction then has one reply fewer in
        # its denominator: a known gap, README "User-level DP").
        moved = [reply for reply in replies if not _is_zero_update(reply, self._global)]
        if not moved:  # no update (none sampled, none arrived, none moved): noise alone
            arrays, metrics = self._noise_only(), None
        else:
            arrays, metrics = self.strategy.aggregate_train(server_round, moved)
        self.last_round_released = arrays is not None
        if arrays is not None:  # a noised aggregate was released: compose it
            self.record_release(server_round, updates=len(replies), clipping_norm=clipping_norm)
        return arrays, metrics

    def _compose(self) -> None:
        """Add this round's event. Every round's event is the same, so the accountant holds
        one composition ``(event, rounds)``: Flower's ``would_exceed`` replays every
        composition it holds, which would make each round's check O(rounds)."""
        rounds = self.rounds_composed + 1
        accountant = rdp_accountant(self.plan)
        accountant.compose(self.event, rounds)
        self._ledger.accountant = accountant

    def _noise_only(self) -> ArrayRecord:
        noise_multiplier = getattr(self.strategy, "noise_multiplier", self.plan.noise_multiplier)
        std = float(noise_multiplier) * self.clipping_norm / self.plan.clients_per_round
        weights = self._global.to_numpy_ndarrays()
        add_gaussian_noise_inplace(weights, std)  # Flower's, as its wrappers use it
        return ArrayRecord(
            {key: Array(np.asarray(w)) for key, w in zip(self._global.keys(), weights, strict=True)}
        )


def _is_zero_update(reply: Message, base: ArrayRecord) -> bool:
    """Whether every array of ``reply`` equals the global model's."""
    if reply.has_error() or not base:
        return False
    for record in reply.content.array_records.values():
        for key, array in record.items():
            if key not in base or not np.array_equal(array.numpy(), base[key].numpy()):
                return False
    return True


class _Composed:
    """The accountant and the composed rounds, shared by every copy of the strategy."""

    def __init__(self, *, accountant: RdpAccountant, rounds: list[dict[str, Any]]) -> None:
        self.accountant = accountant
        self.rounds = rounds

    def __deepcopy__(self, memo: dict[int, object]) -> _Composed:
        return self


def user_level_layer(strategy: Strategy) -> UserLevelDP | None:
    """The :class:`UserLevelDP` layer in ``strategy``'s wrapper chain (None: none)."""
    layer: Any = strategy
    while isinstance(layer, Strategy):
        if isinstance(layer, UserLevelDP):
            return layer
        layer = getattr(layer, "strategy", None)
    return None


def sampled_and_private(strategy: Strategy, *, config: RunConfig, num_nodes: int) -> Strategy:
    """``strategy`` (built with ``fraction_train = 1``) with its own cohort sampling, and
    under user-level DP when ``privacy-unit`` asks for it (README, "User-level DP").

    Raises :class:`~fedmodel.config.ConfigError` for a cohort larger than the federation
    or parameters Flower refuses.
    """
    if config.privacy_unit != "record" and config.delta * num_nodes >= 1:
        # δ is the chance the guarantee fails for someone: at 1 / N one client may as well
        # be published outright (the record-level rule, fedmodel/privacy/delta.py, per client).
        raise ConfigError(
            f"run-config key 'delta' = {config.delta:g} is out of range for user-level DP over "
            f"{num_nodes} clients: must be below 1 / {num_nodes}"
        )
    cohort = expected_cohort(config, population=num_nodes)
    if not 1 <= cohort <= num_nodes:
        raise ConfigError(
            f"run-config key 'clients-per-round' = {config.clients_per_round} is out of "
            f"range: must be at most the {num_nodes} nodes connected"
        )
    sampled = CohortSampling(
        strategy,
        sampling=config.client_sampling,
        sample_rate=cohort / num_nodes,
        cohort_size=cohort,
        population=num_nodes,
    )
    if config.privacy_unit == "record":
        return sampled
    return with_user_level_dp(sampled, plan=user_level_plan(config, population=num_nodes))


class _FixedDenominatorHandled(logging.Filter):
    """Drops Flower's warning that fewer replies than ``m`` "could impact the DP guarantees".

    Here they do not: :class:`EqualWeightMean` divides by ``m`` whatever arrived (the
    missing replies are zero updates), and ClientTracking names every missing reply.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != CLIENTS_DISCREPANCY_WARNING


_FILTER = _FixedDenominatorHandled()


def with_user_level_dp(strategy: Strategy, *, plan: UserLevelPlan) -> UserLevelDP:
    """``strategy`` (FedAvg-style, already in :class:`CohortSampling`) under DP-FedAvg.

    Raises :class:`~fedmodel.config.ConfigError` when Flower refuses the parameters
    (e.g. adaptive clipping's noise multiplier must stay below ``m / 10``).
    """
    mean = EqualWeightMean(strategy, cohort_size=plan.clients_per_round)
    logging.getLogger("flwr").addFilter(_FILTER)  # the same filter once, however many runs
    try:
        if plan.clipping == "adaptive":
            wrapped: Strategy = DifferentialPrivacyServerSideAdaptiveClipping(
                mean,
                noise_multiplier=plan.noise_multiplier,
                num_sampled_clients=plan.clients_per_round,
                initial_clipping_norm=plan.clipping_norm,
            )
        else:
            wrapped = DifferentialPrivacyServerSideFixedClipping(
                mean,
                noise_multiplier=plan.noise_multiplier,
                clipping_norm=plan.clipping_norm,
                num_sampled_clients=plan.clients_per_round,
            )
    except ValueError as error:
        raise ConfigError(
            f"run-config keys 'user-noise-multiplier' = {plan.noise_multiplier:g}, "
            f"'user-clipping' = {plan.clipping!r}, cohort {plan.clients_per_round}: {error}"
        ) from error
    return UserLevelDP(wrapped, plan=plan)
