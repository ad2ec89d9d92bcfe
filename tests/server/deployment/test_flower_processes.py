"""The process plumbing of every Flower caller: config arguments, CLI config, process groups."""

import os
import sys
import time
import tomllib
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from server.deployment.flower_processes import (
    DeploymentError,
    ManagedProcess,
    config_arg,
    flower_env,
    flower_executable,
    stream_output,
    write_cli_config,
)

# A shell that starts a child in its group, prints the child's pid, and waits for it.
WITH_CHILD = ["sh", "-c", "echo start; sleep 60 & echo $!; wait"]


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for its reaper counts as exited)."""
    for _ in range(50):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def test_config_arg_is_read_back_by_flower_as_given():
    values = {"partition-id": 1, "state-dir": "/tmp/a b/ü", "dp": True, "min-noise": 0.5}
    assert parse_config_args([config_arg(values)]) == values


def test_cli_config_names_one_connection_insecure_or_with_its_ca(tmp_path):
    path = write_cli_config(tmp_path / "home", "fed", "127.0.0.1:9093")
    assert tomllib.loads(path.read_text()) == {
        "superlink": {"default": "fed", "fed": {"address": "127.0.0.1:9093", "insecure": True}}
    }
    path = write_cli_config(tmp_path, "fed", "h:1", root_certificates=tmp_path / "ca.crt")
    link = tomllib.loads(path.read_text())["superlink"]["fed"]
    assert link == {"address": "h:1", "root-certificates": str(tmp_path / "ca.crt")}


def test_flower_commands_come_from_this_environment(tmp_path):
    assert Path(flower_executable("flwr")).parent == Path(sys.executable).parent
    with pytest.raises(DeploymentError, match="not-a-flower-command not found"):
        flower_executable("not-a-flower-command")
    env = flower_env(tmp_path, {"X": "1"})
    assert env["FLWR_HOME"] == str(tmp_path) and env["X"] == "1"
    assert env["PATH"].startswith(str(Path(sys.executable).parent))


def test_streamed_output_arrives_line_by_line_with_the_exit_code():
    lines: list[str] = []
    command = ["sh", "-c", "echo a; echo b; exit 3"]
    assert stream_output(command, env=os.environ, on_line=lines.append) == 3
    assert lines == ["a\n", "b\n"]


def test_a_command_past_its_timeout_is_killed_with_its_children():
    lines: list[str] = []
    assert stream_output(WITH_CHILD, env=os.environ, on_line=lines.append, timeout=0.5) is None
    assert _gone(int(lines[1]))


def test_stopping_a_managed_process_stops_its_children(tmp_path):
    process = ManagedProcess("shell", WITH_CHILD, log_path=tmp_path / "log", env=os.environ)
    child = int(process.wait_for_log(r"\n(\d+)\n", timeout=30).group(1))
    process.stop(timeout=0.1)
    assert not process.alive() and _gone(child)
