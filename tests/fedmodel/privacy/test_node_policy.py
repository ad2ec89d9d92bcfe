"""A node's policy accepts the accountants the ledger offers, and only those."""

import pytest

from fedmodel.privacy.ledger import ACCOUNTANT_NAMES
from fedmodel.privacy.node_policy import NodePolicy


def test_a_node_accepts_every_accountant_of_the_ledger_by_default():
    assert NodePolicy.from_node_config({}).allowed_accountants == tuple(ACCOUNTANT_NAMES)
    assert NodePolicy().allowed_accountants == tuple(ACCOUNTANT_NAMES)


def test_a_node_may_narrow_the_accountants_but_not_name_an_unknown_one():
    policy = NodePolicy.from_node_config({"allowed-accountants": "prv"})
    assert policy.allowed_accountants == ("prv",)
    known = ", ".join(ACCOUNTANT_NAMES)
    with pytest.raises(ValueError, match=f"'gdp' must list some of {known}$"):
        NodePolicy.from_node_config({"allowed-accountants": "gdp"})
