"""fedmodel.privacy.rdp: Opacus's RDP of the Sampled Gaussian Mechanism, bit for bit."""

import numpy as np
import pytest
from opacus.accountants.analysis import rdp as opacus_rdp

from fedmodel.privacy.ledger import RDP_ORDERS
from fedmodel.privacy.rdp import rdp_of_one_step


@pytest.mark.parametrize(
    ("noise_multiplier", "sample_rate"),
    [
        (0.3, 0.999),  # little noise, nearly every record: huge terms, long series
        (0.6, 1 / 3),
        (1.0, 1 / 3),  # the default job's shape
        (1.1, 0.01),
        (2.5, 1 / 7),
        (4.0, 0.5),
        (10.0, 1e-4),
        (40.0, 0.9),
    ],
)
def test_equals_opacus_compute_rdp_exactly(noise_multiplier, sample_rate):
    expected = opacus_rdp.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(RDP_ORDERS)
    )
    got = rdp_of_one_step(
        sample_rate=sample_rate, noise_multiplier=noise_multiplier, orders=RDP_ORDERS
    )
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert np.array_equal(got, expected)  # not approximately: the same float64 values


@pytest.mark.parametrize(
    ("noise_multiplier", "sample_rate", "orders"),
    [(1.0, 0.0, [2.0, 3.5]), (1.0, 1.0, [2.0, 3.5]), (0.0, 0.5, [2.0]), (1.0, 0.5, [np.inf])],
)
def test_edge_cases_are_opacus_own(noise_multiplier, sample_rate, orders):
    expected = opacus_rdp.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=orders
    )
    got = rdp_of_one_step(sample_rate=sample_rate, noise_multiplier=noise_multiplier, orders=orders)
    assert np.array_equal(got, expected)


def test_every_order_is_computed_in_the_given_order():
    orders = [64.0, 1.5, 2.0, 10.9]
    got = rdp_of_one_step(sample_rate=0.2, noise_multiplier=1.3, orders=orders)
    alone = [rdp_of_one_step(sample_rate=0.2, noise_multiplier=1.3, orders=[a])[0] for a in orders]
    assert got.tolist() == alone
    assert np.all(np.diff(got[1:]) > 0)  # RDP grows with the order
