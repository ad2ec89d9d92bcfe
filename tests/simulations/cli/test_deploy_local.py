"""``fedmodel deploy-local``: a temporary work folder goes with its keys, however it ends.

The modes of what a federation writes are tested in tests/server/deployment/
(test_warm_executor.py, one federation for both). These start a real SuperLink.
"""

import os
import signal
import tempfile
import threading
import time

import pytest

from simulations.cli import main

pytestmark = pytest.mark.slow

TINY = ["--set", "num-server-rounds=1", "--set", "batch-size=32", "--set", "noise-multiplier=1.5"]
TINY += ["--set", "target-epsilon=0.0"]


@pytest.mark.timeout(120)
def test_an_interrupted_run_removes_its_temporary_folder_with_the_keys(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stop = threading.Event()

    def interrupt_once_the_keys_exist() -> None:  # as `kill` of the command would
        while not stop.is_set():
            if list(tmp_path.glob("fedmodel-*/certs/server.key")):
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=interrupt_once_the_keys_exist, daemon=True)
    watcher.start()
    try:
        code = main(["deploy-local", "--clients", "1", "--tls", *TINY, "--timeout", "100"])
    finally:
        stop.set()
        watcher.join()
    assert code == 130
    assert list(tmp_path.iterdir()) == []  # no ca.key, no server.key, no logs left


@pytest.mark.timeout(60)
def test_a_failed_run_removes_its_temporary_folder(tmp_path, monkeypatch, capsys):
    import server.deployment.local_federation as local_federation
    from server.deployment.flower_processes import DeploymentError

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def superlink_never_answers(superlink, *args, **kwargs):
        assert list(tmp_path.glob("fedmodel-*/certs/server.key"))  # the secrets exist now
        raise DeploymentError("the SuperLink did not answer (test)")

    monkeypatch.setattr(local_federation, "wait_for_health", superlink_never_answers)
    code = main(["deploy-local", "--clients", "1", "--tls", *TINY])
    assert code == 1
    assert "fedmodel: deployment failed: the SuperLink did not answer" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no ca.key, no server.key, no logs left
