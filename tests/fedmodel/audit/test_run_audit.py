"""The claim an audit compares with: read from a run folder's config and client ledgers."""

import json
import math

import numpy as np
import pytest

from fedmodel.audit.membership_inference import loss_threshold_attack
from fedmodel.audit.run_audit import AuditError, RunAudit, claimed_privacy
from fedmodel.config import RunConfig
from fedmodel.results import RunFolder


def _folder(tmp_path, **values):
    config = RunConfig.from_mapping(values)
    folder = RunFolder(tmp_path / "run")
    folder.create(config)
    return folder, config


def test_the_claim_is_the_largest_client_epsilon_with_delta_and_accountant(tmp_path):
    folder, config = _folder(tmp_path, dp=True, delta=1e-6, accountant="prv")
    folder.save_ledger("partition-0", {"epsilon": 2.5, "delta": 1e-6, "accountant": "prv"})
    folder.save_ledger("partition-1", {"epsilon": 3.1, "delta": 1e-6, "accountant": "prv"})
    claimed = claimed_privacy(folder.path, config)
    assert (claimed.epsilon, claimed.clients, claimed.accountant) == (3.1, 2, "PRV")
    assert claimed.describe().startswith(
        "ε = 3.100, δ = 1e-06, PRV accountant, record-level per client (max over 2 clients"
    )


def test_without_dp_the_claim_is_infinite_and_says_so(tmp_path):
    folder, config = _folder(tmp_path, dp=False)
    claimed = claimed_privacy(folder.path, config)
    assert not claimed.dp and math.isinf(claimed.epsilon)
    assert claimed.describe() == "ε = ∞ (DP off: no guarantee)"


def test_dp_without_ledgers_is_unknown_not_zero(tmp_path):
    folder, config = _folder(tmp_path, dp=True)
    claimed = claimed_privacy(folder.path, config)
    assert math.isnan(claimed.epsilon) and "unknown" in claimed.describe()


def test_a_damaged_ledger_is_named(tmp_path):
    folder, config = _folder(tmp_path, dp=True)
    (folder.path / "privacy" / "partition-0.json").write_text("{not json")
    with pytest.raises(AuditError, match=r"partition-0\.json: not a client ledger"):
        claimed_privacy(folder.path, config)


def test_audit_json_of_a_run_without_dp_is_strict_json_with_no_claim(tmp_path):
    folder, config = _folder(tmp_path, dp=False)
    rng = np.random.default_rng(0)
    attack = loss_threshold_attack(rng.random(50), rng.random(50) + 0.5, delta=config.delta)
    audit = RunAudit(str(folder.path), attack, claimed_privacy(folder.path, config), 50, 50, 0)
    document = json.loads(json.dumps(audit.to_json(), allow_nan=False))
    assert document["claimed"]["epsilon"] == "inf" and document["within_claim"] is True
    assert document["claimed"]["unit"] == "none (DP off)"
    assert document["claimed"]["accountant"] is None
    assert document["empirical_epsilon"]["lower_bound"] == attack.epsilon_lower_bound > 0
