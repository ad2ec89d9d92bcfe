"""The run folder's privacy report: privacy.json and privacy.md."""

import json
import math
from dataclasses import asdict

from fedmodel.config import RunConfig
from fedmodel.results import RoundMetrics, RunFolder, privacy_header
from fedmodel.results.privacy_report import privacy_markdown, privacy_report

LEDGER = {
    "epsilon": 1.25,
    "history": [[1.1, 0.1, 30], [1.1, 0.1, 30]],
    "noise_source": "seeded",
    "node_id": 7,
}
USER = {
    "mechanism": "DP-FedAvg",
    "describe": "user-level ε = 2.1330 at δ = 1e-05 (RDP ...)",
    "epsilon": 2.133,
    "delta": 1e-5,
    "accountant": "RDP",
    "noise_multiplier": 1.0,
    "clipping": "fixed",
    "clipping_norm": 1.0,
    "clipping_norm_now": 1.0,
    "clients_per_round": 10,
    "population": 100,
    "client_sample_rate": 0.1,
    "sampling": "poisson",
    "neighbouring_relation": "add-or-remove-one",
    "accounted_noise_multiplier": 1.0,
    "rounds_composed": 1,
    "max_epsilon": 0.0,
    "noise_source": "the server",
    "per_round": [],
}


def test_record_level_report_names_every_part_of_the_guarantee(tmp_path):
    config = RunConfig()
    report = privacy_report(config, ledgers={"client-0": LEDGER}, user_level=None, rounds_run=2)
    assert report["units"] == ["record-level"]
    record = report["record_level"]
    assert record["accountant"] == "RDP" and record["delta"] == 1e-5
    assert record["clipping_norm"] == 2.0 and record["epsilon_max"] == 1.25
    assert record["clients"]["client-0"] == {
        "node_id": 7,
        "epsilon": 1.25,
        "steps": 60,
        "noise_multipliers": [1.1],
        "sample_rates": [0.1],
        "noise_source": "seeded",
    }
    assert any("server sees individual updates" in line for line in report["not_protected"])
    folder = RunFolder(tmp_path / "run")
    folder.create(config)
    folder.save_privacy_report(report)
    assert json.loads((folder.path / "privacy.json").read_text()) == report
    text = (folder.path / "privacy.md").read_text()
    assert "| client-0 | 7 | 1.2500 | 60 | 1.1 | 0.1 | seeded |" in text
    assert "RDP, δ = 1e-05" in text


def test_both_units_and_secure_aggregation_change_what_is_claimed():
    config = RunConfig(privacy_unit="both")
    report = privacy_report(config, ledgers={}, user_level=USER, rounds_run=1, stopped="budget")
    assert report["units"] == ["record-level", "user-level"]
    assert any("user-level ε 2.1330 (δ = 1e-05)" in p for p in report["protected"])
    text = privacy_markdown(report)
    assert "Stopped early: budget" in text and "q (clients) = 0.1" in text
    secure = privacy_report(
        RunConfig(secure_aggregation=True), ledgers={}, user_level=None, rounds_run=1
    )
    assert any("only their sum" in p for p in secure["protected"])
    assert not any("individual updates" in p for p in secure["not_protected"])


def test_dp_off_says_nothing_is_protected():
    report = privacy_report(RunConfig(dp=False), ledgers={}, user_level=None, rounds_run=1)
    assert report["units"] == [] and report["record_level"] is None
    assert "everything: DP is off (ε = ∞)" in report["not_protected"]
    assert "none (DP off)" in privacy_markdown(report)


def test_the_round_line_and_header_name_the_user_level_epsilon():
    metrics = RoundMetrics(
        round=1,
        test_accuracy=0.5,
        test_loss=1.0,
        epsilon_max=math.inf,
        epsilon_mean=math.inf,
        clients_trained=3,
        clients_failed=0,
        train_loss=math.nan,
        seconds=0.1,
        user_epsilon=2.133,
    )
    assert "| user-level ε 2.133 |" in metrics.line(num_rounds=3, dp=False)
    both = RoundMetrics(**{**asdict(metrics), "epsilon_max": 1.0, "epsilon_mean": 0.5})
    assert "ε max 1.000 mean 0.500 | user-level ε 2.133" in both.line(num_rounds=3, dp=True)
    header = privacy_header(RunConfig(dp=False, privacy_unit="user", client_sampling="poisson"))
    for part in (
        "user-level ε",
        "RDP accountant",
        "δ = 1e-05",
        "composed over every noised round",
        "Poisson client sampling, add/remove one client",
        "no record-level ε",
    ):
        assert part in header
    assert "record-level DP per client" in privacy_header(RunConfig(privacy_unit="both"))
    assert "user-level" not in privacy_header(RunConfig())  # the default job's header
