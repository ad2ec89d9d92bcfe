"""The ledger's cached RDP ε is exactly Opacus's, for any history."""

import random

from opacus.accountants import RDPAccountant

from fedmodel.privacy import PrivacyLedger


def test_cached_rdp_epsilon_equals_opacus_get_epsilon_bit_for_bit():
    rng = random.Random(0)
    for _ in range(3):
        ledger = PrivacyLedger(accountant="rdp", delta=1e-5)
        reference = RDPAccountant()
        for _ in range(rng.randint(2, 3)):
            sigma = rng.choice([0.7, 1.0, 1.5])
            rate = rng.choice([0.02, 1 / 7, 0.5, 1.0])
            steps = rng.randint(1, 40)
            ledger.record(noise_multiplier=sigma, sample_rate=rate, steps=steps)
            for _ in range(steps):
                reference.step(noise_multiplier=sigma, sample_rate=rate)
            # Asked again and again (as every round does): the cached answer stays exact.
            assert ledger.epsilon() == reference.get_epsilon(delta=1e-5)
