"""A tiny ClientApp that crashes, raises or counts its calls, for the engine tests."""

import sys
import textwrap

import pytest
from flwr.app import ConfigRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

CRASHING_APP = textwrap.dedent(
    """
    import os

    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()


    @app.train()
    def train(msg, context):
        partition = context.node_config["partition-id"]
        if partition == 1 and msg.content["config"]["crash"]:
            os._exit(3)  # the worker process dies mid-task
        if partition == 2:
            raise ValueError("no data here")
        calls = int(context.state["count"]["calls"]) + 1 if "count" in context.state else 1
        context.state["count"] = ConfigRecord({"calls": calls, "pid": os.getpid()})
        return Message(RecordDict({"count": ConfigRecord({"calls": calls})}), reply_to=msg)
    """
)


@pytest.fixture()
def crashing_app(tmp_path, monkeypatch):
    (tmp_path / "crashing_client_app.py").write_text(CRASHING_APP)
    monkeypatch.syspath_prepend(str(tmp_path))  # workers get this process's sys.path
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    yield "crashing_client_app:app"
    sys.modules.pop("crashing_client_app", None)


@pytest.fixture()
def train_messages():
    """``train_messages(grid, nodes, crash=...)``: one train message per node."""

    def make(grid, nodes, *, crash):
        return [
            grid.create_message(
                RecordDict({"config": ConfigRecord({"crash": crash})}), "train", node, group_id="1"
            )
            for node in nodes
        ]

    return make
