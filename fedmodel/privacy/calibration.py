"""Noise calibration: the noise multiplier that keeps ε within a target over planned steps."""

from __future__ import annotations

import functools

from fedmodel.privacy.ledger import epsilon_of

# Opacus's ``get_noise_multiplier`` search bounds and tolerance, kept so that with no
# earlier steps the answer is exactly Opacus's (a test compares the two).
_FIRST_UPPER_SIGMA = 10.0
_MAX_SIGMA = 2000.0
_EPSILON_TOLERANCE = 0.01


class BudgetSpent(ValueError):
    """No noise multiplier keeps ε within the target: earlier steps already spent it."""


@functools.lru_cache(maxsize=1024)
def _calibrate(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str,
    prior: tuple[tuple[float, float, int], ...],
) -> float:
    def epsilon(sigma: float) -> float:
        return epsilon_of([*prior, (sigma, sample_rate, steps)], delta=delta, accountant=accountant)

    spent = epsilon_of(list(prior), delta=delta, accountant=accountant)
    if spent >= target_epsilon:
        raise BudgetSpent(
            f"the ledger already holds ε = {spent:.4f} at δ = {delta:g} ({accountant}); no "
            f"noise keeps {steps} more steps within target ε = {target_epsilon:g}"
        )
    # Opacus's bisection (opacus.accountants.utils.get_noise_multiplier), with the
    # earlier steps composed in: Opacus's own search takes no prior history.
    sigma_low, sigma_high, eps_high = 0.0, _FIRST_UPPER_SIGMA, float("inf")
    while eps_high > target_epsilon:
        sigma_high *= 2
        eps_high = epsilon(sigma_high)
        if sigma_high > _MAX_SIGMA:
            raise BudgetSpent(
                f"target ε = {target_epsilon:g} leaves too little budget for {steps} more steps "
                f"(ε already spent {spent:.4f}; noise multiplier would exceed {_MAX_SIGMA:g})"
            )
    while target_epsilon - eps_high > _EPSILON_TOLERANCE:
        sigma = (sigma_low + sigma_high) / 2
        eps = epsilon(sigma)
        if eps < target_epsilon:
            sigma_high, eps_high = sigma, eps
        else:
            sigma_low = sigma
    return sigma_high


def noise_for_target_epsilon(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str,
    prior_history: list[tuple[float, float, int]] | list[list[float]] = (),  # type: ignore[assignment]
) -> float:
    """Smallest noise multiplier (to Opacus's tolerance) with ε <= target after ``steps``.

    ``prior_history`` holds the steps already taken on this data (this node's ledger,
    over earlier runs and rounds): the target is for all steps together, so the noise
    is calibrated against the budget that remains, not from zero. Raises
    :class:`BudgetSpent` when that budget cannot fit the steps. Cached: the search
    takes 1-5 s (more with PRV), and clients of equal size share the answer.
    """
    if target_epsilon <= 0:
        raise ValueError(f"target epsilon must be > 0, got {target_epsilon}")
    if steps < 1:
        raise ValueError(f"planned steps must be >= 1, got {steps}")
    prior = tuple((float(s), float(q), int(n)) for s, q, n in prior_history)
    return _calibrate(target_epsilon, delta, sample_rate, steps, accountant, prior)
