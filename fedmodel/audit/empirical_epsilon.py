"""Empirical ε lower bounds: what an attack's success proves a mechanism cannot beat.

Two bounds, both read off the scores of a membership-inference attack (higher score: "more
likely a member"):

- :func:`epsilon_from_rates`: the hypothesis-testing bound of Kairouz et al. 2015, as used
  for auditing DP-SGD by Jagielski et al. 2020 (https://arxiv.org/abs/2006.07709) and
  Nasr et al. 2021 (https://arxiv.org/abs/2101.04535). An (ε, δ)-DP mechanism lets no test
  reach ``TPR > e^ε FPR + δ`` (nor ``TNR > e^ε FNR + δ``); so with Clopper-Pearson bounds
  at the chosen confidence, ``ε >= log((TPR_lo - δ) / FPR_hi)``. It treats every audited
  record as an independent trial.
- :func:`one_run_epsilon`: the one-run audit of Steinke, Nasr & Jagielski 2023
  (https://arxiv.org/abs/2305.08846; their main theorem, as the paper's p-value code
  computes it): with ``m`` candidate records each a member by an independent fair coin,
  an auditor that makes ``r`` guesses and gets ``v`` right refutes (ε, δ)-DP at p-value
  ``P[Binomial(r, e^ε / (1 + e^ε)) >= v] + 2 m δ α``. No independence between trials is
  assumed: it holds for the records of one training run.

Both are lower bounds from one attack: a small value says this attack found little, not
that the mechanism is private.

Why by hand: the binomial tails, Clopper-Pearson intervals and root finding are scipy's;
what is left (the two bounds' formulas) is in no installed library: Google's
``jax_privacy.auditing`` has them but needs JAX, and the attack libraries weighed in
:mod:`fedmodel.audit.membership_inference` did not fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats


def clopper_pearson(
    successes: np.ndarray | int, trials: np.ndarray | int, *, confidence: float
) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided Clopper-Pearson (exact binomial) interval of a proportion, vectorised.

    The same interval as ``scipy.stats.binomtest(k, n).proportion_ci(method="exact")``,
    for arrays of counts at once; each side fails with probability at most
    ``(1 - confidence) / 2``.

    Parameters
    ----------
    successes, trials : int or array of int
        Counts, ``0 <= successes <= trials``, ``trials >= 1``.
    confidence : float
        In (0, 1), e.g. 0.95.

    Returns
    -------
    low, high : ndarray
        The interval's ends (0 for no success, 1 for all successes).
    """
    _check_confidence(confidence)
    k = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    if np.any(n < 1) or np.any(k < 0) or np.any(k > n):
        raise ValueError("need 0 <= successes <= trials and trials >= 1")
    tail = (1.0 - confidence) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        low = np.where(k > 0, stats.beta.ppf(tail, k, n - k + 1), 0.0)
        high = np.where(k < n, stats.beta.ppf(1.0 - tail, k + 1, n - k), 1.0)
    return low, high


def epsilon_from_rates(
    *,
    true_positives: np.ndarray | int,
    members: int,
    false_positives: np.ndarray | int,
    non_members: int,
    delta: float,
    confidence: float = 0.95,
) -> np.ndarray:
    """The ε an (ε, δ)-DP mechanism needs to allow these counts, at ``confidence``.

    ``max(log((TPR_lo - δ) / FPR_hi), log((TNR_lo - δ) / FNR_hi), 0)`` with
    Clopper-Pearson ends (:func:`clopper_pearson`): both intervals hold together with
    probability at least ``confidence`` (each side of each fails with at most half of
    ``1 - confidence``, and only one side of each enters).

    Parameters
    ----------
    true_positives : int or array of int
        Members the attack called members (at one threshold each).
    members : int
        Members tested.
    false_positives : int or array of int
        Non-members the attack called members.
    non_members : int
        Non-members tested.
    delta : float
        The δ of the claim tested, in [0, 1).
    confidence : float
        In (0, 1).

    Returns
    -------
    ndarray
        The bound at each threshold (0 where the counts prove nothing).
    """
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    tpr_lo, tpr_hi = clopper_pearson(true_positives, members, confidence=confidence)
    fpr_lo, fpr_hi = clopper_pearson(false_positives, non_members, confidence=confidence)
    del tpr_hi, fpr_lo  # only the conservative side of each enters
    with np.errstate(divide="ignore", invalid="ignore"):
        positive = np.log((tpr_lo - delta) / fpr_hi)  # TPR <= e^ε FPR + δ
        negative = np.log((1.0 - fpr_hi - delta) / (1.0 - tpr_lo))  # TNR <= e^ε FNR + δ
    bound = np.fmax(np.nan_to_num(positive, nan=0.0), np.nan_to_num(negative, nan=0.0))
    return np.maximum(bound, 0.0)


def one_run_p_value(
    *, candidates: int, guesses: int, correct: int, epsilon: float, delta: float
) -> float:
    """The p-value of ``correct`` right guesses out of ``guesses`` under (ε, δ)-DP.

    Steinke, Nasr & Jagielski 2023 (https://arxiv.org/abs/2305.08846), their main
    theorem as the paper's p-value code computes it: ``P[Binomial(r, q) >= v] + 2 m δ
    max_i P[v - i <= Binomial(r, q) < v] / i`` with ``q = e^ε / (1 + e^ε)``, the accuracy of ε-DP
    randomised response, for ``m`` candidates each a member by an independent fair coin.

    Parameters
    ----------
    candidates : int
        ``m``: the records audited (members and non-members).
    guesses : int
        ``r``: the records the auditor guessed on (it abstains on the rest).
    correct : int
        ``v``: the right guesses.
    epsilon, delta : float
        The claim tested (ε >= 0, δ in [0, 1]).
    """
    m, r, v = candidates, guesses, correct
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= correct <= guesses <= candidates, got {v}, {r}, {m}")
    if epsilon < 0 or not 0.0 <= delta <= 1.0:
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    alpha = 0.0
    if v > 0 and delta > 0:
        below = stats.binom.pmf(v - np.arange(1, v + 1), r, q)  # P[B = v - i], i = 1..v
        alpha = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))
    return min(tail + alpha * delta * 2 * m, 1.0)


def one_run_epsilon(
    *, candidates: int, guesses: int, correct: int, delta: float, confidence: float = 0.95
) -> float:
    """The largest ε that ``correct`` of ``guesses`` refutes at ``confidence`` (0: none).

    The ε at which :func:`one_run_p_value` equals ``1 - confidence`` (it grows with ε).
    """
    _check_confidence(confidence)
    p = 1.0 - confidence

    def excess(epsilon: float) -> float:
        return (
            one_run_p_value(
                candidates=candidates,
                guesses=guesses,
                correct=correct,
                epsilon=epsilon,
                delta=delta,
            )
            - p
        )

    if excess(0.0) >= 0.0:  # not even ε = 0 is refuted
        return 0.0
    high = 1.0
    while excess(high) < 0.0:
        high *= 2.0
        if high > 1e3:  # every guess right and very many of them: say so, do not loop
            return math.inf
    return float(optimize.brentq(excess, 0.0, high, xtol=1e-9))


@dataclass(frozen=True)
class RatesBound:
    """The TPR/FPR bound at one threshold: the counts behind it and its value."""

    epsilon: float
    threshold: float
    true_positives: int
    members: int
    false_positives: int
    non_members: int

    @property
    def tpr(self) -> float:
        return self.true_positives / self.members

    @property
    def fpr(self) -> float:
        return self.false_positives / self.non_members


def best_rates_bound(
    member_scores: np.ndarray,
    non_member_scores: np.ndarray,
    *,
    delta: float,
    confidence: float,
) -> RatesBound:
    """The threshold ``score >= t`` whose :func:`epsilon_from_rates` bound is largest.

    Choosing the threshold on the same scores that then measure it overstates the bound:
    callers choose on one part of the data and measure on another
    (:func:`rates_bound_at`).
    """
    members, non_members = _scores(member_scores), _scores(non_member_scores)
    thresholds = np.unique(np.concatenate([members, non_members]))
    tp, fp = _counts_at(members, thresholds), _counts_at(non_members, thresholds)
    bounds = epsilon_from_rates(
        true_positives=tp,
        members=len(members),
        false_positives=fp,
        non_members=len(non_members),
        delta=delta,
        confidence=confidence,
    )
    best = int(np.argmax(bounds))
    return RatesBound(
        epsilon=float(bounds[best]),
        threshold=float(thresholds[best]),
        true_positives=int(tp[best]),
        members=len(members),
        false_positives=int(fp[best]),
        non_members=len(non_members),
    )


def rates_bound_at(
    member_scores: np.ndarray,
    non_member_scores: np.ndarray,
    *,
    threshold: float,
    delta: float,
    confidence: float,
) -> RatesBound:
    """The :func:`epsilon_from_rates` bound of the test ``score >= threshold``."""
    members, non_members = _scores(member_scores), _scores(non_member_scores)
    tp = int(np.sum(members >= threshold))
    fp = int(np.sum(non_members >= threshold))
    bound = epsilon_from_rates(
        true_positives=tp,
        members=len(members),
        false_positives=fp,
        non_members=len(non_members),
        delta=delta,
        confidence=confidence,
    )
    return RatesBound(float(bound), float(threshold), tp, len(members), fp, len(non_members))


@dataclass(frozen=True)
class OneRunBound:
    """The one-run bound: guesses made, right, the candidates, and ε."""

    epsilon: float
    candidates: int
    guesses: int
    correct: int
    guessed_in: int
    guessed_out: int


# Guess counts tried by :func:`best_one_run_bound`, as fractions of the candidates: "in" for
# the top k_in scores, "out" for the bottom k_out. Fixed in advance, so that a union bound
# (Bonferroni) over them keeps the confidence.
GUESS_FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5)


def best_one_run_bound(
    member_scores: np.ndarray,
    non_member_scores: np.ndarray,
    *,
    delta: float,
    confidence: float,
    seed: int = 0,
) -> OneRunBound:
    """The best :func:`one_run_epsilon` over :data:`GUESS_FRACTIONS`, Bonferroni-corrected.

    For each fraction f: guess "in" for the ``f m`` highest scores, and either no "out"
    or "out" for the ``f m`` lowest; each of those ``2 len(GUESS_FRACTIONS)`` bounds is
    computed at confidence ``1 - (1 - confidence) / count``, so the best of them holds at
    ``confidence``. Tied scores are ranked in an order drawn with ``seed``.
    """
    members, non_members = _scores(member_scores), _scores(non_member_scores)
    scores = np.concatenate([members, non_members])
    is_member = np.concatenate([np.ones(len(members), bool), np.zeros(len(non_members), bool)])
    # Highest first; ties in random order: a stable sort would rank tied members (listed
    # first) above tied non-members and "guess right" by the order of the lists alone.
    shuffled = np.random.default_rng(seed).permutation(len(scores))
    order = shuffled[np.argsort(-scores[shuffled], kind="stable")]
    ranked = is_member[order]
    m = len(scores)
    sizes = sorted({max(1, int(f * m)) for f in GUESS_FRACTIONS})
    choices = [(k, k_out) for k in sizes for k_out in (0, k) if k + k_out <= m]
    each = 1.0 - (1.0 - confidence) / len(choices)
    best = OneRunBound(0.0, m, 0, 0, 0, 0)
    for k_in, k_out in choices:
        correct = int(ranked[:k_in].sum()) + (int((~ranked[m - k_out :]).sum()) if k_out else 0)
        epsilon = one_run_epsilon(
            candidates=m, guesses=k_in + k_out, correct=correct, delta=delta, confidence=each
        )
        if epsilon > best.epsilon:
            best = OneRunBound(epsilon, m, k_in + k_out, correct, k_in, k_out)
    return best


def _counts_at(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """How many of ``scores`` are >= each threshold."""
    ordered = np.sort(scores)
    return len(ordered) - np.searchsorted(ordered, thresholds, side="left")


def _scores(values: np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    if len(array) == 0:
        raise ValueError("need at least one score of members and of non-members")
    if not np.all(np.isfinite(array)):
        raise ValueError("attack scores must be finite")
    return array


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


__all__ = [
    "GUESS_FRACTIONS",
    "OneRunBound",
    "RatesBound",
    "best_one_run_bound",
    "best_rates_bound",
    "clopper_pearson",
    "epsilon_from_rates",
    "one_run_epsilon",
    "one_run_p_value",
    "rates_bound_at",
]
