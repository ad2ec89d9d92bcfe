"""Noise calibration: the noise that keeps ε within the target, against what was spent."""

import pytest

from fedmodel.privacy.calibration import BudgetSpent, noise_for_target_epsilon


def test_calibrated_noise_meets_the_target_for_the_planned_steps(opacus_rdp_epsilon):
    sigma = noise_for_target_epsilon(
        target_epsilon=4.0, delta=1e-5, sample_rate=0.2, steps=100, accountant="rdp"
    )
    assert 3.9 <= opacus_rdp_epsilon([(sigma, 0.2, 100)], delta=1e-5) <= 4.0


def test_with_no_earlier_steps_calibration_is_opacuss_own_answer():
    from opacus.accountants.utils import get_noise_multiplier

    for accountant, steps in (("rdp", 120), ("rdp", 900), ("prv", 60)):
        ours = noise_for_target_epsilon(
            target_epsilon=8.0, delta=1e-5, sample_rate=1 / 3, steps=steps, accountant=accountant
        )
        theirs = get_noise_multiplier(
            target_epsilon=8.0, target_delta=1e-5, sample_rate=1 / 3, steps=steps,
            accountant=accountant,
        )
        assert ours == theirs


def test_calibration_composes_the_steps_already_spent(opacus_rdp_epsilon):
    prior = [(2.0, 0.1, 200)]
    sigma = noise_for_target_epsilon(
        target_epsilon=6.0, delta=1e-5, sample_rate=0.1, steps=100, accountant="rdp",
        prior_history=prior,
    )
    assert 5.99 - 0.01 <= opacus_rdp_epsilon([*prior, (sigma, 0.1, 100)], delta=1e-5) <= 6.0
    fresh = noise_for_target_epsilon(
        target_epsilon=6.0, delta=1e-5, sample_rate=0.1, steps=100, accountant="rdp"
    )
    assert sigma > fresh  # less budget left: more noise
    with pytest.raises(BudgetSpent, match="already holds ε"):
        noise_for_target_epsilon(
            target_epsilon=opacus_rdp_epsilon(prior, delta=1e-5) * 0.99, delta=1e-5,
            sample_rate=0.1, steps=1, accountant="rdp", prior_history=prior,
        )
