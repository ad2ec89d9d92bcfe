"""The one rule on δ: below 1 / N of every dataset it protects."""

import pytest

from fedmodel.config import ConfigError
from fedmodel.privacy.delta import check_delta


def test_delta_below_one_over_n_passes_and_at_or_above_is_refused_naming_the_data():
    check_delta(0.0099, num_examples=100, where="client 3")
    for delta in (0.01, 0.5):
        with pytest.raises(ConfigError) as error:
            check_delta(delta, num_examples=100, where="client 3")
        assert str(error.value).startswith(
            f"run-config key 'delta' = {delta:g} is out of range for client 3: must be below "
            "1/100 = 0.01"
        )


def test_no_records_is_refused():
    with pytest.raises(ConfigError, match="client 3: no records"):
        check_delta(1e-5, num_examples=0, where="client 3")
