"""The ε lower bounds: golden values by hand, scipy's own intervals, randomised response."""

import math

import numpy as np
import pytest
from scipy import stats

from fedmodel.audit.empirical_epsilon import (
    best_one_run_bound,
    best_rates_bound,
    clopper_pearson,
    epsilon_from_rates,
    one_run_epsilon,
    one_run_p_value,
    rates_bound_at,
)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (17, 250), (249, 250)])
def test_clopper_pearson_is_scipys_exact_interval(k, n):
    low, high = clopper_pearson(k, n, confidence=0.95)
    expected = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert float(low) == pytest.approx(expected.low, abs=1e-12)
    assert float(high) == pytest.approx(expected.high, abs=1e-12)


def test_clopper_pearson_at_the_edges_by_hand():
    # No success: the upper end solves (1 - p)^n = 0.025; all successes: p^n = 0.025.
    low, high = clopper_pearson(np.array([0, 20]), np.array([20, 20]), confidence=0.95)
    assert low[0] == 0.0 and high[1] == 1.0
    assert high[0] == pytest.approx(1 - 0.025 ** (1 / 20), rel=1e-10)
    assert low[1] == pytest.approx(0.025 ** (1 / 20), rel=1e-10)


def test_rates_bound_of_a_perfect_attack_by_hand():
    # 100 of 100 members found, none of 100 non-members: TPR_lo = 0.025^(1/100),
    # FPR_hi = 1 - 0.025^(1/100); ε = log((TPR_lo - δ) / FPR_hi) = 3.2814.
    tpr_lo = 0.025 ** (1 / 100)
    by_hand = math.log((tpr_lo - 1e-5) / (1 - tpr_lo))
    bound = epsilon_from_rates(
        true_positives=100, members=100, false_positives=0, non_members=100, delta=1e-5
    )
    assert float(bound) == pytest.approx(by_hand, rel=1e-9)
    assert float(bound) == pytest.approx(3.2814, abs=1e-4)


def test_rates_bound_takes_the_better_of_the_two_directions():
    # 60 of 100 members found, 1 of 100 non-members: TPR side log((lo - δ) / hi); the TNR
    # side is log((1 - hi - δ) / (1 - lo)), smaller here.
    tpr = stats.binomtest(60, 100).proportion_ci(method="exact")
    fpr = stats.binomtest(1, 100).proportion_ci(method="exact")
    positive = math.log((tpr.low - 1e-5) / fpr.high)
    negative = math.log((1 - fpr.high - 1e-5) / (1 - tpr.low))
    bound = epsilon_from_rates(
        true_positives=60, members=100, false_positives=1, non_members=100, delta=1e-5
    )
    assert float(bound) == pytest.approx(max(positive, negative), rel=1e-9)
    assert positive > negative


def test_no_separation_proves_nothing():
    bound = epsilon_from_rates(
        true_positives=np.array([0, 50, 100]),
        members=100,
        false_positives=np.array([0, 50, 100]),
        non_members=100,
        delta=1e-5,
    )
    assert bound.tolist() == [0.0, 0.0, 0.0]


def test_one_run_epsilon_with_every_guess_right_by_hand():
    # δ = 0, v = r = 100: the p-value is q^100 with q = e^ε / (1 + e^ε); at 95% confidence
    # q = 0.05^(1/100) and ε = log(q / (1 - q)) = 3.4930.
    q = 0.05 ** (1 / 100)
    by_hand = math.log(q / (1 - q))
    epsilon = one_run_epsilon(candidates=1000, guesses=100, correct=100, delta=0.0)
    assert epsilon == pytest.approx(by_hand, abs=1e-6)
    assert epsilon == pytest.approx(3.4930, abs=1e-4)


def test_one_run_p_value_against_a_direct_sum():
    # P[Binomial(r, q) >= v] + 2 m δ max_i P[v - i <= B < v] / i, summed with math.comb.
    m, r, v, eps, delta = 200, 40, 31, 0.7, 1e-3
    q = 1 / (1 + math.exp(-eps))
    pmf = [math.comb(r, j) * q**j * (1 - q) ** (r - j) for j in range(r + 1)]
    tail = sum(pmf[v:])
    alpha = max(sum(pmf[v - i : v]) / i for i in range(1, v + 1))
    expected = tail + 2 * m * delta * alpha
    got = one_run_p_value(candidates=m, guesses=r, correct=v, epsilon=eps, delta=delta)
    assert got == pytest.approx(expected, rel=1e-9)


def test_one_run_bound_shrinks_with_delta_and_vanishes_at_chance():
    without = one_run_epsilon(candidates=1000, guesses=200, correct=150, delta=0.0)
    with_delta = one_run_epsilon(candidates=1000, guesses=200, correct=150, delta=1e-4)
    assert 0 < with_delta < without
    assert one_run_epsilon(candidates=1000, guesses=200, correct=100, delta=1e-5) == 0.0


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="correct <= guesses <= candidates"):
        one_run_p_value(candidates=10, guesses=20, correct=5, epsilon=1.0, delta=0.0)
    with pytest.raises(ValueError, match="confidence"):
        clopper_pearson(1, 2, confidence=1.0)
    with pytest.raises(ValueError, match="trials"):
        clopper_pearson(3, 2, confidence=0.9)


def _randomised_response(epsilon, n, rng):
    """Scores of an ε-DP mechanism (randomised response on membership): the optimal test."""
    keep = math.exp(epsilon) / (1 + math.exp(epsilon))
    members = (rng.random(n) < keep).astype(float)
    non_members = (rng.random(n) >= keep).astype(float)
    return members, non_members


@pytest.mark.parametrize("epsilon", [0.5, 2.0])
def test_bounds_stay_below_the_epsilon_of_an_epsilon_dp_mechanism(epsilon):
    rng = np.random.default_rng(7)
    members, non_members = _randomised_response(epsilon, 4000, rng)
    chosen = best_rates_bound(members[:2000], non_members[:2000], delta=0.0, confidence=0.95)
    measured = rates_bound_at(
        members[2000:], non_members[2000:], threshold=chosen.threshold, delta=0.0, confidence=0.95
    )
    one_run = best_one_run_bound(members, non_members, delta=0.0, confidence=0.95)
    # Valid (below ε) and not vacuous (the optimal attack gets close).
    assert 0.6 * epsilon < measured.epsilon <= epsilon
    assert 0.5 * epsilon < one_run.epsilon <= epsilon


def test_tied_scores_do_not_leak_the_order_of_the_lists():
    # Every score equal: members listed first must not make the top guesses "right".
    tied = np.zeros(500)
    assert best_one_run_bound(tied, tied, delta=1e-5, confidence=0.95).epsilon == 0.0
    assert best_rates_bound(tied, tied, delta=1e-5, confidence=0.95).epsilon == 0.0
