"""The deployment commands of ``fedmodel``: ``make-certs``, ``make-node-key``, ``deploy-local``.

They test simulations/cli/ (moved there from server/deployment/cli.py) and belong in
tests/simulations/cli/; kept here until moved, so the commands stay tested.
"""

from simulations.cli import main


def test_cli_makes_certificates_and_keys(tmp_path, capsys):
    assert main(["make-certs", "--out", str(tmp_path / "c"), "--host", "127.0.0.1"]) == 0
    assert main(["make-node-key", "--out", str(tmp_path / "k"), "--name", "n"]) == 0
    out = capsys.readouterr().out
    assert "ca.crt" in out and "flwr supernode register" in out
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["n", "n.pub"]


def test_deploy_local_refuses_a_bad_config_before_starting_anything(tmp_path, capsys):
    code = main(
        [
            "deploy-local",
            "--clients",
            "2",
            "--set",
            "round-timeout=0",
            "--work-dir",
            str(tmp_path / "w"),
        ]
    )
    assert code == 2
    assert "run-config key 'round-timeout' = 0 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
