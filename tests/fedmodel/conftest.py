"""Fixtures shared by the domain's tests."""

from collections.abc import Callable, Sequence

import pytest
from opacus.accountants import RDPAccountant


@pytest.fixture
def opacus_rdp_epsilon() -> Callable[..., float]:
    """ε of a ``[(sigma, q, steps), ...]`` history by a fresh Opacus RDP accountant: the
    reference the ledger, the calibration and training are checked against."""

    def epsilon(history: Sequence[tuple[float, float, int]], *, delta: float) -> float:
        accountant = RDPAccountant()
        accountant.history = list(history)
        return accountant.get_epsilon(delta=delta)

    return epsilon
