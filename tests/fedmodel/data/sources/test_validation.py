"""Checks every source passes before training: a client too small for private training."""

import re

import pytest

from fedmodel.config import ConfigError
from fedmodel.data.sources import DataError, check_trainable
from fedmodel.privacy.delta import check_delta


def test_a_dataset_too_small_for_the_batch_size_under_dp_is_refused():
    with pytest.raises(DataError, match=re.escape(
        "site.npz: 12 examples is fewer than batch-size 32: under DP the sampling rate "
        "batch-size/N = 2.67 would be above 1"
    )):
        check_trainable(12, batch_size=32, dp=True, delta=1e-5, origin="site.npz")
    with pytest.raises(DataError) as error:
        check_trainable(40, batch_size=32, dp=True, delta=0.1, origin="site.npz")
    # The one δ < 1/N rule (fedmodel.privacy.delta), reported as a DataError of the data.
    with pytest.raises(ConfigError) as rule:
        check_delta(0.1, num_examples=40, where="site.npz")
    assert str(error.value) == error.value.public == str(rule.value)
    assert "'delta' = 0.1 is out of range for site.npz: must be below 1/40" in str(error.value)
    check_trainable(12, batch_size=32, dp=False, delta=1e-5, origin="site.npz")  # no DP: fine
    check_trainable(32, batch_size=32, dp=True, delta=1e-5, origin="site.npz")  # N = B: q = 1
