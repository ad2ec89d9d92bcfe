"""Checkpoint and resume (README): a killed run, resumed, ends bit for bit as one never killed.

The killed run is ``fedmodel simulate`` in a subprocess of its own session, stopped by a
SIGKILL of its process group while it is mid-run: paused (a patched function sleeps) just
after the checkpoint of round k was written and part of round k + 1 (or its metrics) is
done. Resuming runs ``fedmodel simulate --resume RUN_DIR`` in another fresh process. The
comparison covers the final weights (bytes of ``model.pt``), every client's ledger as the
server recorded it and as the client holds it (its Context state in the last checkpoint),
and every round's metrics except its wall-clock seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from fedmodel.config import ConfigError
from fedmodel.results.checkpoint import (
    CLIENTS_FILE,
    Checkpoint,
    CheckpointError,
    checkpoint_dir,
    load_client_states,
    read_state_file,
    write_state_file,
)
from simulations import simulate
from simulations.cli import main

REPO = Path(__file__).resolve().parents[2]
CLIENTS, ROUNDS = 5, 5
JOB = {"num-server-rounds": ROUNDS, "batch-size": 32}  # DP on, target ε 8: calibrated noise
# Runs fedmodel's command with one function patched to print PAUSED and sleep at a round.
PAUSING = textwrap.dedent(
    """
    import sys, time

    import server.round_recorder as recorder
    import simulations.engines.inprocess as engine
    from simulations.cli import main

    where, pause_round = sys.argv[1], int(sys.argv[2])


    def pause():
        print("PAUSED", flush=True)
        time.sleep(600)


    write = recorder.RoundRecorder.write
    call = engine.call_client_app


    def write_then_pause(self, metrics, arrays):  # after the round's metrics, before its checkpoint
        write(self, metrics, arrays)
        if metrics.round == pause_round:
            pause()


    def pause_in_training(app, message, context):  # the third client of the round
        if (
            message.metadata.message_type == "train"
            and int(message.content["config"]["server-round"]) == pause_round
            and context.node_config.get("partition-id") == 2
        ):
            pause()
        return call(app, message, context)


    if where == "after-metrics":
        recorder.RoundRecorder.write = write_then_pause
    else:
        engine.call_client_app = pause_in_training
    sys.exit(main(sys.argv[3:]))
    """
)


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PYTHONPATH": str(REPO),
    }


def _job_args(run_dir: Path, overrides: dict) -> list[str]:
    sets = [f"--set={key}={json.dumps(value)}" for key, value in overrides.items()]
    return ["simulate", "--clients", str(CLIENTS), "--run-dir", str(run_dir), *sets,
            "--no-plots", "--no-progress"]  # fmt: skip


def _kill_mid_run(tmp_path: Path, run_dir: Path, overrides: dict, *, where: str, at: int) -> str:
    """Start the job in a subprocess, SIGKILL its process group once paused at round ``at``."""
    script = tmp_path / "pausing.py"
    script.write_text(PAUSING)
    process = subprocess.Popen(
        [sys.executable, str(script), where, str(at), *_job_args(run_dir, overrides)],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    paused = threading.Event()

    def read() -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("PAUSED"):
                paused.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert paused.wait(timeout=120), "".join(lines)[-3000:]
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        reader.join(timeout=10)
    assert process.returncode == -signal.SIGKILL
    return "".join(lines)


def _resume(run_dir: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from simulations.cli import main; sys.exit(main())",
         "simulate", "--resume", str(run_dir), "--no-plots", "--no-progress"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _outcome(run_dir: Path) -> dict:
    """What must be equal: weights, ledgers (server's files, clients' Contexts), metrics."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "model": (run_dir / "model.pt").read_bytes(),
        "ledgers": {p.name: p.read_text() for p in sorted((run_dir / "privacy").glob("*.json"))},
        "contexts": load_client_states(run_dir, server_round=ROUNDS),
        "metrics": [{k: v for k, v in row.items() if k != "seconds"} for row in metrics],
    }


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("overrides", "where", "at", "checkpointed"),
    [
        # FedAvg, a checkpoint after every round: killed after round 3's metrics were
        # written and before its checkpoint: round 3 runs again.
        ({}, "after-metrics", 3, 2),
        # FedAdam (server moments), a checkpoint every 2 rounds: killed while round 4's
        # third client trains, two rounds after the checkpoint of round 2.
        ({"strategy": "fedadam", "checkpoint-every": 2}, "in-training", 4, 2),
    ],
    ids=["fedavg", "fedadam"],
)
def test_a_killed_and_resumed_run_ends_bit_for_bit_as_an_uninterrupted_one(
    tmp_path, overrides, where, at, checkpointed
):
    config = {**JOB, **overrides}
    assert main(_job_args(tmp_path / "whole", config)) == 0
    killed = tmp_path / "killed"
    log = _kill_mid_run(tmp_path, killed, config, where=where, at=at)
    assert f"round {at - 1}/{ROUNDS}" in log and f"round {ROUNDS}/{ROUNDS}" not in log
    assert Checkpoint.load(killed).round == checkpointed

    resumed_log = _resume(killed)
    assert f"Resuming {killed} after round {checkpointed} of {ROUNDS}" in resumed_log
    assert f"round {checkpointed + 1}/{ROUNDS}" in resumed_log
    assert f"round {checkpointed}/{ROUNDS}" not in resumed_log
    whole, resumed = _outcome(tmp_path / "whole"), _outcome(killed)
    assert resumed["metrics"] == whole["metrics"]
    assert [row["round"] for row in resumed["metrics"]] == list(range(1, ROUNDS + 1))
    assert resumed["ledgers"] == whole["ledgers"] and len(whole["ledgers"]) == CLIENTS
    assert resumed["contexts"] == whole["contexts"]
    assert resumed["model"] == whole["model"]


# -- refusals: a checkpoint that is damaged or belongs to another run ------------------

FAST = {"num-server-rounds": 3, "batch-size": 32, "target-epsilon": 0, "noise-multiplier": 1.0}


class _Crash(Exception):
    pass


@pytest.fixture()
def crashed(tmp_path, monkeypatch):
    """A 3-round run that died in round 2 (after its metrics): its checkpoint is of round 1."""
    import server.round_recorder as recorder

    write = recorder.RoundRecorder.write

    def crash_in_round_2(self, metrics, arrays):
        write(self, metrics, arrays)
        if metrics.round == 2:
            raise _Crash

    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(recorder.RoundRecorder, "write", crash_in_round_2)
        with pytest.raises(_Crash):
            simulate({**FAST, "run-dir": str(run_dir)}, num_clients=3)
    assert Checkpoint.load(run_dir).round == 1
    return run_dir


def _resume_api(run_dir: Path, **changes):
    return simulate({**FAST, "run-dir": str(run_dir), "resume": True, **changes}, num_clients=3)


def test_a_damaged_checkpoint_is_refused_before_anything_runs(crashed):
    path = checkpoint_dir(crashed) / "server.pt"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="damaged"):
        _resume_api(crashed)


def test_a_checkpoint_of_another_run_config_is_refused(crashed):
    with pytest.raises(CheckpointError, match=r"another config: seed = 1 \(checkpoint: 0\)"):
        _resume_api(crashed, seed=1)


def test_a_clients_file_of_another_round_is_refused(crashed):
    path = checkpoint_dir(crashed) / CLIENTS_FILE
    state = read_state_file(path, "clients")
    write_state_file(path, "clients", {**state, "round": 2})  # valid, but of round 2
    with pytest.raises(CheckpointError, match="round 1 but clients.pt holds round 2"):
        _resume_api(crashed)
    metrics = json.loads((crashed / "metrics.json").read_text())
    assert [row["round"] for row in metrics] == [1, 2]  # the refused resume wrote nothing


def test_a_finished_run_or_a_folder_without_a_run_is_not_resumed(crashed, tmp_path, capsys):
    assert _resume_api(crashed).final.round == 3  # resumed in-process: rounds 2 and 3
    with pytest.raises(CheckpointError, match="finished all 3 rounds; nothing to resume"):
        _resume_api(crashed)
    assert main(["simulate", "--resume", str(tmp_path / "nothing")]) == 2
    assert "holds no run to resume (no config.json)" in capsys.readouterr().err


def test_resume_keeps_the_runs_own_config_and_engine(crashed, capsys):
    assert main(["simulate", "--resume", str(crashed), "--set", "seed=1"]) == 2
    assert "--resume continues the run with its own config; --set" in capsys.readouterr().err
    assert main(["simulate", "--resume", str(crashed), "--clients", "4"]) == 2
    assert "has 3 clients" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="resume runs on the in-process engine"):
        simulate({**FAST, "run-dir": str(crashed), "resume": True}, engine="ray")
