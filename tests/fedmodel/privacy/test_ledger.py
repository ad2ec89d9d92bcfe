import logging
import math
import random
import warnings

import pytest
from opacus.accountants import RDPAccountant

from fedmodel.privacy import PrivacyLedger
from fedmodel.privacy.ledger import RDP_ORDERS, epsilon_of


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


def test_gdp_is_not_offered():
    # Opacus's GDP accountant composes only the last entry of a restored history.
    with pytest.raises(ValueError, match="unknown accountant 'gdp'"):
        PrivacyLedger(accountant="gdp", delta=1e-5)
    from fedmodel.config import ConfigError, RunConfig

    with pytest.raises(ConfigError, match="accountant"):
        RunConfig(accountant="gdp")


def test_cached_rdp_epsilon_equals_opacus_get_epsilon_bit_for_bit():
    """The ledger's cached RDP ε is exactly Opacus's, for any history."""
    rng = random.Random(0)
    for _ in range(3):
        ledger = PrivacyLedger(accountant="rdp", delta=1e-5)
        reference = RDPAccountant()
        planned: list[tuple[float, float, int]] = []  # one entry a round, as a plan lists them
        for _ in range(rng.randint(3, 5)):
            if planned and rng.random() < 0.5:  # the same (σ, q) again, as rounds go
                sigma, rate, _ = planned[-1]
            else:
                sigma = rng.choice([0.7, 1.0, 1.5])
                rate = rng.choice([0.02, 1 / 7, 0.5, 1.0])
            steps = rng.randint(1, 40)
            ledger.record(noise_multiplier=sigma, sample_rate=rate, steps=steps)
            planned.append((sigma, rate, steps))
            for _ in range(steps):
                reference.step(noise_multiplier=sigma, sample_rate=rate)
            # Asked again and again (as every round does): the cached answer stays exact,
            # and a history listed round by round gives what Opacus's merged one gives.
            expected = reference.get_epsilon(delta=1e-5, alphas=list(RDP_ORDERS))
            assert ledger.epsilon() == expected
            assert epsilon_of(planned, delta=1e-5, accountant="rdp") == expected


@pytest.mark.parametrize(
    "planned",
    [  # histories whose round-by-round sum of RDP differed from the merged one's in the last bit
        [(0.7, 1.0, 2), (1.0, 1.0, 36), (1.0, 1.0, 15), (1.0, 0.5, 2)],
        [(1.5, 0.02, 13), (1.5, 0.02, 2), (1.5, 1 / 7, 17), (1.5, 1 / 7, 19)],
        [(1.0, 1 / 7, 35), (1.0, 1 / 7, 27), (0.7, 1.0, 14), (0.7, 1.0, 7)],
    ],
)
def test_a_history_listed_round_by_round_gives_opacus_epsilon_exactly(planned):
    """A round's plan lists the history so far plus its own entry; Opacus's accountant
    merges consecutive steps of equal (σ, q). Both must give the ε the reply reports."""
    reference = RDPAccountant()
    for sigma, rate, steps in planned:
        for _ in range(steps):
            reference.step(noise_multiplier=sigma, sample_rate=rate)
    expected = reference.get_epsilon(delta=1e-5, alphas=list(RDP_ORDERS))
    assert epsilon_of(planned, delta=1e-5, accountant="rdp") == expected


@pytest.mark.parametrize(
    ("sigma", "rate", "steps", "best_order"),
    [(6.0, 0.1, 1, 128), (8.0, 0.05, 2, 320), (10.0, 0.01, 1, 768)],
)
def test_short_runs_are_tight_without_opacus_largest_alpha_warning(sigma, rate, steps, best_order):
    """A one-round, few-step run: its optimal RDP order lies above Opacus's default 63.

    With Opacus's default orders these warn "Optimal order is the largest alpha" and
    report a looser ε; the ledger's orders reach 1024, so no warning, and ε equals an
    independent computation: Google's dp_accounting RDP accountant (Poisson-sampled
    Gaussian, add/remove) at the ledger's integer orders, where the optimum lies.
    """
    dp_accounting = pytest.importorskip("dp_accounting")
    from dp_accounting import rdp

    logging.getLogger("absl").setLevel(logging.ERROR)
    ledger = PrivacyLedger(accountant="rdp", delta=1e-5)
    ledger.record(noise_multiplier=sigma, sample_rate=rate, steps=steps)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Opacus's largest-alpha warning would raise here
        epsilon = ledger.epsilon()
    reference = rdp.RdpAccountant(orders=[a for a in RDP_ORDERS if float(a).is_integer()])
    reference.compose(
        dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(sigma)), steps
    )
    expected, order = reference.get_epsilon_and_optimal_order(1e-5)
    assert order == best_order > max(RDPAccountant.DEFAULT_ALPHAS)
    assert epsilon == pytest.approx(expected, abs=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loose = RDPAccountant()
        loose.history = [(sigma, rate, steps)]
        assert epsilon < loose.get_epsilon(delta=1e-5)  # tighter than the default orders
