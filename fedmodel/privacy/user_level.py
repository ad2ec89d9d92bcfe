"""User-level (client-level) central DP: what DP-FedAvg protects, and how it is accounted.

Under user-level DP the unit of privacy is a whole client: every record it holds, over
every round it takes part in. DP-FedAvg (McMahan et al. 2018, "Learning Differentially
Private Recurrent Language Models", ICLR, https://arxiv.org/abs/1710.06963) gives it
centrally: the server clips each client's update to L2 norm ``C``, averages with a fixed
denominator (the expected cohort ``m``, equal client weights) and adds Gaussian noise of
standard deviation ``z * C / m`` to the average. Adaptive clipping (Andrew et al. 2021,
"Differentially Private Learning with Adaptive Clipping", NeurIPS) learns ``C`` from a
noised count of clipped updates; its total noise is split so that the round is still a
Gaussian mechanism with noise multiplier ``z``.

This module is the plan of that mechanism and its accounting model, free of Flower:
the server's strategy wrappers (``server/strategies/user_level_dp.py``) apply it and
compose its events with Flower's client-level RDP accountant (Google's
``dp_accounting`` underneath).

Accounting models, by ``client-sampling``:

- ``"poisson"``: each client joins a round independently with probability
  ``q = m / N``, as the amplification-by-sampling theorem assumes (Mironov, Talwar &
  Zhang 2019, "Rényi Differential Privacy of the Sampled Gaussian Mechanism"). The
  neighbouring relation is add/remove one client; one client moves the fixed-denominator
  average by at most ``C / m``, so each round is a Poisson-sampled Gaussian with noise
  multiplier ``z``.
- ``"fixed"``: exactly ``m`` of the ``N`` clients, drawn without replacement. Add/remove
  does not fit a fixed cohort size (removing a client puts another in its place), so the
  relation is replace-one: the sum then moves by up to ``2C``, and each round is
  accounted as a Gaussian with noise multiplier ``z / 2`` sampled without replacement
  (Wang, Balle & Kasiviswanathan 2019, "Subsampled Rényi Differential Privacy and
  Analytical Moments Accountant"). Replace-one ε is for a different neighbouring
  relation than add/remove ε and is not comparable number for number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedmodel.config import CLIENT_SAMPLINGS, PRIVACY_UNITS, USER_CLIPPINGS, RunConfig

# Names the accounting model and the neighbouring relation, as Flower's enums spell them.
NEIGHBOURING = {"poisson": "add-or-remove-one", "fixed": "replace-one"}
SAMPLING_METHOD = {"poisson": "poisson", "fixed": "without-replacement"}
ACCOUNTANT = "RDP (Flower's client-level RdpAccountant, Google's dp_accounting)"


@dataclass(frozen=True)
class UserLevelPlan:
    """The user-level DP mechanism of a run and the accounting model of its rounds.

    Parameters
    ----------
    noise_multiplier : float
        ``z``: noise standard deviation on the clipped sum, in units of ``C``.
    clipping_norm : float
        ``C``: the L2 bound on one client's update (the initial one when adaptive).
    clipping : str
        ``"fixed"`` or ``"adaptive"`` (Andrew et al. 2021).
    clients_per_round : int
        ``m``: the (expected) cohort size, and the average's fixed denominator.
    population : int
        ``N``: the clients that can be sampled.
    sampling : str
        ``"fixed"`` (``m`` without replacement) or ``"poisson"`` (each with ``q = m / N``).
    delta : float
        The δ at which ε is reported.
    max_epsilon : float
        Budget on the user-level ε (0: none): no round is run whose ε would exceed it.
    """

    noise_multiplier: float
    clipping_norm: float
    clipping: str
    clients_per_round: int
    population: int
    sampling: str
    delta: float
    max_epsilon: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ValueError(f"noise_multiplier must be > 0, got {self.noise_multiplier}")
        if not (math.isfinite(self.clipping_norm) and self.clipping_norm > 0):
            raise ValueError(f"clipping_norm must be > 0, got {self.clipping_norm}")
        if self.clipping not in USER_CLIPPINGS:
            raise ValueError(f"clipping must be one of {USER_CLIPPINGS}, got {self.clipping!r}")
        if self.sampling not in CLIENT_SAMPLINGS:
            raise ValueError(f"sampling must be one of {CLIENT_SAMPLINGS}, got {self.sampling!r}")
        if self.population < 1:
            raise ValueError(f"population must be >= 1, got {self.population}")
        if not 1 <= self.clients_per_round <= self.population:
            raise ValueError(
                f"clients_per_round must be in [1, population = {self.population}], "
                f"got {self.clients_per_round}"
            )
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if not (math.isfinite(self.max_epsilon) and self.max_epsilon >= 0):
            raise ValueError(f"max_epsilon must be >= 0, got {self.max_epsilon}")

    @property
    def sample_rate(self) -> float:
        """``q = m / N``: a client's chance to be in a round's cohort."""
        return self.clients_per_round / self.population

    @property
    def neighbouring_relation(self) -> str:
        """``"add-or-remove-one"`` (Poisson) or ``"replace-one"`` (fixed cohort)."""
        return NEIGHBOURING[self.sampling]

    @property
    def accounted_noise_multiplier(self) -> float:
        """The Gaussian's noise multiplier in units of the relation's sensitivity.

        ``z`` under add/remove (sensitivity ``C``); ``z / 2`` under replace-one, where one
        client replaced moves the sum by up to ``2C``.
        """
        return self.noise_multiplier / (2 if self.sampling == "fixed" else 1)

    def noise_std(self, clipping_norm: float | None = None) -> float:
        """Standard deviation of the noise on the average: ``z * C / m``."""
        norm = self.clipping_norm if clipping_norm is None else clipping_norm
        return self.noise_multiplier * norm / self.clients_per_round

    def describe(self, *, epsilon: float, rounds: int) -> str:
        """One line: ε, δ, the accountant, the unit, and what was composed."""
        amplification = (
            f"Poisson-sampled, q = {self.sample_rate:.4g}, add/remove one client"
            if self.sampling == "poisson"
            else f"{self.clients_per_round} of {self.population} without replacement, "
            "replace-one client"
        )
        return (
            f"user-level ε = {epsilon:.4f} at δ = {self.delta:g} (RDP accountant, "
            f"{rounds} noised round{'s' if rounds != 1 else ''} composed, {amplification}, "
            f"z = {self.noise_multiplier:g})"
        )


def expected_cohort(config: RunConfig, *, population: int) -> int:
    """``m``: run-config ``clients-per-round``, or (0) what Flower's FedAvg would sample.

    Flower 1.42 samples ``max(int(N * fraction-train), min-train-replies)`` nodes;
    capped at ``N``.
    """
    if config.clients_per_round > 0:
        return config.clients_per_round
    return min(population, max(int(population * config.fraction_train), config.min_train_replies))


def user_level_plan(config: RunConfig, *, population: int) -> UserLevelPlan:
    """The run config's user-level mechanism over ``population`` clients.

    Raises ``ValueError`` (e.g. ``clients-per-round`` above the population).
    """
    if config.privacy_unit == "record":
        raise ValueError("privacy-unit = 'record': the run has no user-level mechanism")
    return UserLevelPlan(
        noise_multiplier=config.user_noise_multiplier,
        clipping_norm=config.user_clipping_norm,
        clipping=config.user_clipping,
        clients_per_round=expected_cohort(config, population=population),
        population=population,
        sampling=config.client_sampling,
        delta=config.delta,
        max_epsilon=config.max_epsilon,
    )


__all__ = [
    "ACCOUNTANT",
    "PRIVACY_UNITS",
    "UserLevelPlan",
    "expected_cohort",
    "user_level_plan",
]
