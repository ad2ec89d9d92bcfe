"""LocalFederation: Flower's SuperLink and SuperNodes on loopback, as separate processes.

Each federation runs in a ``with LocalFederation(...)`` block, which stops every process
it started (SIGTERM, then SIGKILL to each process group) however the block ends;
pytest-timeout turns a hang into an exception inside the block, so a failing test
leaves nothing behind either. Tiny jobs (MLP on digits, 1-3 rounds) keep them quick.
"""

from __future__ import annotations

import json
import threading

import pytest
from opacus.accountants import RDPAccountant

from fedmodel.config import RunConfig
from fedmodel.data import partition_sizes
from fedmodel.results import load_metrics
from fedmodel.training import sample_rate_for
from server.deployment.flower_processes import DeploymentError
from server.deployment.local_federation import LocalFederation

pytestmark = pytest.mark.slow  # real Flower processes: a minute and more per test

NOISE, DELTA, BATCH = 1.5, 1e-5, 32
SMALL = {
    "learning-rate": 1.0,
    "batch-size": BATCH,
    "noise-multiplier": NOISE,
    "target-epsilon": 0.0,
    "delta": DELTA,
}


def _run(federation: LocalFederation, name: str, **values) -> tuple:
    run_dir = federation.work_dir / "runs" / name
    outcome = federation.submit({**SMALL, **values, "run-dir": str(run_dir)}, timeout=240)
    assert outcome.succeeded, outcome.log[-3000:]
    return outcome, load_metrics(run_dir), run_dir


def _expected_epsilon(rounds: int, *, partition_id: int, num_partitions: int) -> tuple[int, float]:
    """Steps and ε of a client after ``rounds`` rounds, from a fresh Opacus accountant."""
    size = partition_sizes(RunConfig.from_mapping(SMALL), num_partitions=num_partitions)
    q = sample_rate_for(size[partition_id], BATCH)
    steps = rounds * round(1 / q)  # one local epoch of Poisson batches per round
    accountant = RDPAccountant()
    accountant.history = [(NOISE, q, steps)]
    return steps, accountant.get_epsilon(delta=DELTA)


def _ledger(run_dir, partition_id: int) -> dict:
    return json.loads((run_dir / "privacy" / f"partition-{partition_id}.json").read_text())


@pytest.fixture(scope="module")
def insecure(tmp_path_factory):
    """Two SuperNodes without TLS, and the outcome of a first 2-round run on them."""
    with LocalFederation(tmp_path_factory.mktemp("insecure"), num_nodes=2) as federation:
        yield federation, _run(federation, "first", **{"num-server-rounds": 2})


@pytest.mark.timeout(300)
def test_two_round_run_on_two_supernodes_without_tls(insecure):
    federation, (outcome, rounds, run_dir) = insecure
    assert [r.round for r in rounds] == [1, 2]
    assert all(r.clients_trained == 2 and r.clients_failed == 0 for r in rounds)
    assert rounds[-1].test_accuracy > 0.25  # chance 0.1; secure noise varies (0.41-0.60 seen)
    # Each ClientApp message runs in a new process; ε still composes both rounds, so the
    # ledger survived in Flower's Context between the processes.
    for partition_id in (0, 1):
        steps, epsilon = _expected_epsilon(2, partition_id=partition_id, num_partitions=2)
        ledger = _ledger(run_dir, partition_id)
        assert ledger["steps_total"] == steps
        assert ledger["epsilon"] == pytest.approx(epsilon, abs=1e-6)
    assert "ε by client: partition-0 (node" in outcome.log


@pytest.mark.timeout(300)
def test_second_run_starts_from_the_epsilon_the_node_already_spent(insecure):
    federation, (_, first_rounds, first_dir) = insecure
    _, rounds, run_dir = _run(federation, "second", **{"num-server-rounds": 1})
    for partition_id in (0, 1):
        steps, epsilon = _expected_epsilon(3, partition_id=partition_id, num_partitions=2)
        ledger = _ledger(run_dir, partition_id)
        assert ledger["steps_total"] == steps  # 2 steps-rounds of run 1 + 1 of run 2
        assert ledger["epsilon"] == pytest.approx(epsilon, abs=1e-6)
        assert ledger["epsilon"] > _ledger(first_dir, partition_id)["epsilon"]
        (stored,) = (federation.node_dir(partition_id) / "state").glob("privacy-ledger-*.json")
        assert len(json.loads(stored.read_text())["runs"]) == 2
    assert rounds[0].epsilon_max > first_rounds[-1].epsilon_max


@pytest.mark.timeout(300)
def test_deployed_nodes_use_secure_noise_and_refuse_a_run_without_dp(insecure):
    federation, (outcome, _, run_dir) = insecure
    assert "noise and sampling drawn per node from: secure x2" in outcome.log
    assert _ledger(run_dir, 0)["noise_source"] == "secure"
    refused, rounds, _ = _run(federation, "no-dp", **{"num-server-rounds": 1, "dp": False})
    assert rounds[0].clients_trained == 0 and rounds[0].clients_failed == 2
    assert refused.log.count("PolicyRefusal: this node requires DP") == 2


@pytest.mark.timeout(300)
def test_a_killed_supernode_does_not_stop_the_run_and_a_restarted_one_rejoins(tmp_path):
    timeout = 15.0
    with LocalFederation(tmp_path, num_nodes=2) as federation:
        crashed = threading.Event()

        def crash_node_1_in_round_2() -> None:
            # Killed as soon as round 2's message has reached it: mid-round.
            federation.nodes[1].wait_for_log("Receiving: train message", count=2, timeout=200)
            federation.kill_node(1)
            crashed.set()
            federation.start_node(1, wait=False)  # comes back under a new node id

        threading.Thread(target=crash_node_1_in_round_2, daemon=True).start()
        run_dir = tmp_path / "runs" / "faulty"
        outcome = federation.submit(
            {
                **SMALL,
                "num-server-rounds": 3,
                "round-timeout": timeout,
                "run-dir": str(run_dir),
            },
            timeout=240,
        )
    assert crashed.is_set() and outcome.succeeded, outcome.log[-3000:]
    rounds = load_metrics(run_dir)
    assert [r.round for r in rounds] == [1, 2, 3]
    assert rounds[1].clients_trained == 1 and rounds[1].clients_failed == 1
    assert f"no reply within {timeout:g} s" in outcome.log
    # Round 3 samples the restarted node too; the crashed id may still be listed
    # online until its heartbeat expires, and then fails again.
    assert rounds[2].clients_trained == 2
    assert rounds[2].test_accuracy > rounds[0].test_accuracy


@pytest.mark.timeout(300)
def test_tls_and_supernode_auth_refuse_an_unregistered_node_and_admit_a_registered_one(
    tmp_path,
):
    # Node 2 asks for a partition that does not exist: its ClientApp raises every round.
    bad = {"num-partitions": 2}
    federation = LocalFederation(
        tmp_path, num_nodes=3, tls=True, auth=True, node_configs=[{}, {}, bad]
    )
    try:
        federation.start_superlink()
        federation.start_node(0)
        federation.start_node(1)
        with pytest.raises(DeploymentError, match="exited with code"):
            federation.start_node(2, register=False)
        assert "Failed to activate SuperNode" in federation.nodes[2].log()
        assert _online(federation) == 2
        federation.register_node(2)
        federation.start_node(2)
        assert _online(federation) == 3
        outcome, rounds, _ = _run(federation, "tls", **{"num-server-rounds": 2})
    finally:
        federation.stop()
    assert all(r.clients_trained == 2 and r.clients_failed == 1 for r in rounds)
    # Secure noise (a deployed node's default) differs from run to run: a loose floor.
    assert rounds[-1].test_accuracy > 0.25  # chance is 0.1
    assert "ConfigError: partition-id 2 is out of range for 2 partitions" in outcome.log


def _online(federation: LocalFederation) -> int:
    return sum(node["status"] == "online" for node in federation.cli.list_nodes())


@pytest.mark.timeout(480)
def test_a_run_resumed_after_its_superlink_died_counts_every_step_of_every_node(tmp_path):
    """SuperLink and ServerApp killed after a checkpoint; a new federation over the same
    work folder (the nodes' state-dirs) resumes the run: all rounds recorded once, and
    each node's ε composes every step its ledger holds, from both Flower runs."""
    from fedmodel.results.checkpoint import Checkpoint, checkpoint_dir

    run_dir = tmp_path / "runs" / "resumed"
    values = {**SMALL, "num-server-rounds": 3, "run-dir": str(run_dir)}
    with LocalFederation(tmp_path, num_nodes=2) as federation:
        killed = threading.Event()

        def kill_the_server_side_after_round_1() -> None:
            server_pt = checkpoint_dir(run_dir) / "server.pt"
            while not server_pt.exists():
                threading.Event().wait(0.05)
            federation.superlink.kill()  # type: ignore[union-attr]
            federation.executors[-1].kill()  # the ServerApp's launcher and its children
            killed.set()

        threading.Thread(target=kill_the_server_side_after_round_1, daemon=True).start()
        try:
            outcome = federation.submit(values, timeout=200)
        except (DeploymentError, KeyError, ValueError):  # `flwr list` asks the dead SuperLink
            outcome = None
    assert killed.is_set() and (outcome is None or not outcome.succeeded)
    done = Checkpoint.load(run_dir).round
    assert 1 <= done < 3

    with LocalFederation(tmp_path, num_nodes=2) as federation:  # new ports, same state-dirs
        outcome = federation.submit({**values, "resume": True}, timeout=240)
    assert outcome.succeeded, outcome.log[-3000:]
    assert f"after round {done} of 3 from its checkpoint" in outcome.log
    assert "each node's ledger in its state-dir keeps counting" in outcome.log
    assert [r.round for r in load_metrics(run_dir)] == [1, 2, 3]
    for partition_id in (0, 1):
        per_round, _ = _expected_epsilon(1, partition_id=partition_id, num_partitions=2)
        (stored,) = (federation.node_state_dir(partition_id)).glob("privacy-ledger-*.json")
        runs = json.loads(stored.read_text())["runs"]
        assert len(runs) == 2  # the killed Flower run and the resumed one
        history = [tuple(entry) for run in runs.values() for entry in run["history"]]
        steps = sum(n for _, _, n in history)
        # Every round trained at least once; a round cut short by the crash trained
        # again on resume, and both are spent and counted.
        assert steps >= 3 * per_round and steps % per_round == 0
        accountant = RDPAccountant()
        accountant.history = history
        ledger = _ledger(run_dir, partition_id)
        assert ledger["steps_total"] == steps  # the reported ε forgets no step
        assert ledger["epsilon"] == pytest.approx(accountant.get_epsilon(delta=DELTA), abs=1e-6)
