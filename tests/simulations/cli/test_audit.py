"""``fedmodel audit RUN_DIR``: a tiny digits run folder attacked end to end; its errors."""

import json
import shutil

import numpy as np
import pytest

from fedmodel.audit import audit_run
from simulations.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "digits"
    argv = ["simulate", "--run-dir", str(path), "--no-plots", "--no-progress", "--clients", "2"]
    assert main([*argv, "--set", "num-server-rounds=2"]) == 0
    return path


def test_audit_prints_the_attack_beside_the_claim_and_writes_audit_json(run_dir, capsys):
    assert main(["audit", str(run_dir)]) == 0
    out = capsys.readouterr().out
    document = json.loads((run_dir / "audit.json").read_text())
    ledgers = [json.loads(p.read_text()) for p in (run_dir / "privacy").glob("*.json")]
    claimed = max(ledger["epsilon"] for ledger in ledgers)
    # digits: 1437 training records of 2 clients, 360 test records; equal numbers drawn.
    assert (document["members"], document["non_members"]) == (360, 360)
    assert (document["members_available"], document["non_members_available"]) == (1437, 360)
    assert 0.0 <= document["auc"] <= 1.0 and 0.0 <= document["tpr_at_fpr"]["tpr"] <= 1.0
    assert document["claimed"]["epsilon"] == claimed and document["claimed"]["clients"] == 2
    assert document["claimed"]["accountant"] == "RDP" and document["claimed"]["delta"] == 1e-5
    bound = document["empirical_epsilon"]["lower_bound"]
    assert bound <= claimed and document["within_claim"] is True
    assert f"AUC                      {document['auc']:.4f}" in out
    assert "TPR at 0.1% FPR" in out
    # Every ε printed names δ, the accountant and the unit.
    assert f"ε = {claimed:.3f}, δ = 1e-05, RDP accountant, record-level per client" in out
    assert "at δ = 1e-05, 95% confidence; unit: one record's membership" in out
    assert "not a proof" in out


def test_the_same_seed_gives_the_same_audit_and_max_records_limits_it(run_dir):
    first = audit_run(run_dir, seed=3).to_json()
    assert audit_run(run_dir, seed=3).to_json() == first
    small = audit_run(run_dir, max_records=50, seed=3)
    assert (small.attack.members, small.attack.non_members) == (50, 50)
    assert small.attack.one_run.candidates == 100


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda run, tmp: tmp / "missing", "missing: no such run folder"),
        (lambda run, tmp: tmp, "not a run folder (no config.json)"),
        (lambda run, tmp: _copy(run, tmp, keep=("config.json",)), "holds no model.pt"),
        (lambda run, tmp: _custom_without_data_path(run, tmp), "each client brought its own"),
    ],
    ids=["missing", "no-config", "no-model", "own-data"],
)
def test_a_run_folder_that_cannot_be_audited_is_one_line_and_exit_code_2(
    run_dir, tmp_path, capsys, make, message
):
    folder = make(run_dir, tmp_path)
    assert main(["audit", str(folder)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error
    assert not (folder / "audit.json").exists()  # nothing half written


def test_bad_options_are_one_line(run_dir, capsys):
    assert main(["audit", str(run_dir), "--confidence", "1.5"]) == 2
    assert "--confidence must be in (0, 1)" in capsys.readouterr().err


def _copy(run_dir, tmp_path, *, keep):
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in keep:
        shutil.copy(run_dir / name, folder / name)
    return folder


def _custom_without_data_path(run_dir, tmp_path):
    folder = _copy(run_dir, tmp_path, keep=("config.json", "model.pt"))
    document = json.loads((folder / "config.json").read_text())
    document["run_config"].update({"dataset": "custom", "data-path": "", "num-classes": 10})
    (folder / "config.json").write_text(json.dumps(document))
    return folder


def test_custom_data_members_are_the_shared_files_records(tmp_path, capsys):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    np.savez(tmp_path / "train.npz", x=(x[:300] / 16).astype(np.float32), y=y[:300])
    np.savez(tmp_path / "test.npz", x=(x[300:400] / 16).astype(np.float32), y=y[300:400])
    run = tmp_path / "run"
    values = {
        "dataset": "custom",
        "data-path": str(tmp_path / "train.npz"),
        "test-data": str(tmp_path / "test.npz"),
        "num-classes": 10,
        "dp": "false",
        "num-server-rounds": 1,
    }
    sets = [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]
    argv = ["simulate", "--run-dir", str(run), "--no-plots", "--no-progress", "--clients", "2"]
    assert main([*argv, *sets]) == 0
    assert main(["audit", str(run)]) == 0
    assert "claimed                  ε = ∞ (DP off: no guarantee)" in capsys.readouterr().out
    document = json.loads((run / "audit.json").read_text())
    # Both clients' partitions of train.npz are the members; test.npz the non-members.
    assert (document["members_available"], document["non_members_available"]) == (300, 100)
    assert document["claimed"]["epsilon"] == "inf"
