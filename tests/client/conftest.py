"""Fixtures for calling the ClientApp directly, as a Flower runtime would."""

import pytest
from flwr.supercore.task_identity import TaskIdentity


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    # Flower's runtimes set who is sending; messages are stamped with it.
    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
