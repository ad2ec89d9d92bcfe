import math

import pytest
from opacus.accountants import RDPAccountant

from fedmodel.privacy import PrivacyLedger, noise_for_target_epsilon


def test_rdp_golden_value_from_opacus():
    # Opacus's own RDP test: sigma 1.5, q 0.04, 2250 steps, delta 1e-5 -> eps 7.32911.
    ledger = PrivacyLedger(accountant="rdp", delta=1e-5)
    ledger.record(noise_multiplier=1.5, sample_rate=0.04, steps=2250)
    assert ledger.epsilon() == pytest.approx(7.32911, abs=1e-5)
    assert ledger.steps == 2250


def test_state_dict_round_trip_keeps_the_whole_history():
    ledger = PrivacyLedger(accountant="rdp", delta=1e-5)
    ledger.record(noise_multiplier=1.0, sample_rate=0.1, steps=30)
    ledger.record(noise_multiplier=2.0, sample_rate=0.2, steps=10)
    restored = PrivacyLedger.from_state_dict(ledger.state_dict())
    assert restored.history == [(1.0, 0.1, 30), (2.0, 0.2, 10)]
    assert restored.epsilon() == ledger.epsilon()
    # composing more steps after a restore only ever increases epsilon
    restored.record(noise_multiplier=1.0, sample_rate=0.1, steps=1)
    assert restored.epsilon() > ledger.epsilon()


def test_ledger_refuses_to_mix_accountants():
    state = PrivacyLedger(accountant="prv", delta=1e-5).state_dict()
    with pytest.raises(ValueError, match="kept with the 'prv' accountant, this run uses 'rdp'"):
        PrivacyLedger(accountant="rdp", delta=1e-5).load_state_dict(state)


def test_empty_ledger_spends_nothing_and_noiseless_steps_spend_everything():
    ledger = PrivacyLedger(accountant="rdp", delta=1e-5)
    assert ledger.epsilon() == 0.0
    ledger.record(noise_multiplier=0.0, sample_rate=0.1, steps=1)
    assert math.isinf(ledger.epsilon())


def test_describe_names_delta_accountant_unit_and_steps():
    ledger = PrivacyLedger(accountant="rdp", delta=1e-5)
    ledger.record(noise_multiplier=1.5, sample_rate=0.04, steps=2250)
    assert ledger.describe() == (
        "ε = 7.3291 at δ = 1e-05 (RDP accountant, record-level, 2250 DP-SGD steps composed)"
    )


def test_calibrated_noise_meets_the_target_for_the_planned_steps():
    sigma = noise_for_target_epsilon(
        target_epsilon=4.0, delta=1e-5, sample_rate=0.2, steps=100, accountant="rdp"
    )
    accountant = RDPAccountant()
    accountant.history = [(sigma, 0.2, 100)]
    epsilon = accountant.get_epsilon(delta=1e-5)
    assert 3.9 <= epsilon <= 4.0


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


def test_calibration_composes_the_steps_already_spent():
    prior = [(2.0, 0.1, 200)]
    spent = RDPAccountant()
    spent.history = list(prior)
    sigma = noise_for_target_epsilon(
        target_epsilon=6.0, delta=1e-5, sample_rate=0.1, steps=100, accountant="rdp",
        prior_history=prior,
    )
    accountant = RDPAccountant()
    accountant.history = [*prior, (sigma, 0.1, 100)]
    assert 5.99 - 0.01 <= accountant.get_epsilon(delta=1e-5) <= 6.0
    fresh = noise_for_target_epsilon(
        target_epsilon=6.0, delta=1e-5, sample_rate=0.1, steps=100, accountant="rdp"
    )
    assert sigma > fresh  # less budget left: more noise
    from fedmodel.privacy.calibration import BudgetSpent

    with pytest.raises(BudgetSpent, match="already holds ε"):
        noise_for_target_epsilon(
            target_epsilon=spent.get_epsilon(delta=1e-5) * 0.99, delta=1e-5, sample_rate=0.1,
            steps=1, accountant="rdp", prior_history=prior,
        )


def test_gdp_is_not_offered():
    # Opacus's GDP accountant composes only the last entry of a restored history.
    with pytest.raises(ValueError, match="unknown accountant 'gdp'"):
        PrivacyLedger(accountant="gdp", delta=1e-5)
    from fedmodel.config import ConfigError, RunConfig

    with pytest.raises(ConfigError, match="accountant"):
        RunConfig(accountant="gdp")
