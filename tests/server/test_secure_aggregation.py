"""SecAgg+ rounds through Flower's workflow: dropouts, halts, and the refused combinations.

The federation runs in this process (``InProcessGrid``, the in-process engine's Grid) with
node configs chosen here: a node whose ``partition-id`` is out of range answers the
protocol's key stages (Flower's mod handles them) and fails when it is asked to train, in
the masked-vector stage: a real dropout after its keys were shared.
"""

import math

import pytest
import torch
from flwr.app import Context, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from client.client_app import app as client_app
from fedmodel.config import ConfigError, RunConfig
from fedmodel.data import partition_sizes
from fedmodel.privacy.sampling_plan import steps_per_epoch_for
from fedmodel.results import load_metrics
from server.delegating_grid import DelegatingGrid
from server.secure_aggregation import (
    CLIPPING_RANGE,
    QUANTIZATION_RANGE,
    SecureAggregation,
    quantization_tolerance,
)
from server.server_app import app as server_app
from simulations.client_data import SIMULATED_NODE
from simulations.engines.inprocess import FIRST_NODE_ID, InProcessGrid

NUM_NODES = 5
RUN = {
    "num-server-rounds": 1,
    "noise-multiplier": 1.0,
    "target-epsilon": 0.0,  # fixed σ: no calibration, the same noise in every run
    "seed": 3,
}


def _nodes(partition_ids):
    return [
        {**SIMULATED_NODE, "partition-id": i, "num-partitions": NUM_NODES} for i in partition_ids
    ]


def _run(values, node_configs, run_dir, *, tamper=None):
    """The ServerApp against in-process ClientApps with the given node configs.

    ``tamper(grid)`` may wrap the nodes' Grid (a network that changes replies).
    """
    config = RunConfig.from_mapping({**RUN, **values, "run-dir": str(run_dir)})
    grid = InProcessGrid(
        client_app=client_app, run_config=config.to_mapping(), node_configs=node_configs
    )
    saved = {name: getattr(TaskIdentity, name) for name in ("_task_id", "_run_id", "_node_id")}
    # Flower's runtimes tell the ServerApp process who it is (as the in-process engine).
    TaskIdentity._task_id, TaskIdentity._run_id = 1, grid.run.run_id
    TaskIdentity._node_id = SUPERLINK_NODE_ID
    context = Context(
        run_id=grid.run.run_id,
        node_id=SUPERLINK_NODE_ID,
        node_config={},
        state=RecordDict(),
        run_config=config.to_mapping(),
    )
    try:
        server_app(tamper(grid) if tamper else grid, context)
    finally:
        for name, value in saved.items():
            setattr(TaskIdentity, name, value)
    return load_metrics(run_dir)


@pytest.fixture(scope="module")
def plain_four(tmp_path_factory):
    """Partitions 0-3 of 5 for one round, aggregated in the clear: the expected model."""
    run_dir = tmp_path_factory.mktemp("plain") / "run"
    rounds = _run({}, _nodes([0, 1, 2, 3]), run_dir)
    return rounds, torch.load(run_dir / "model.pt")


def _check_fedavg_of_first_four(run_dir, plain_model):
    """The SecAgg+ model equals plain FedAvg of partitions 0-3, to Flower's quantization."""
    model = torch.load(run_dir / "model.pt")
    config = RunConfig.from_mapping({**RUN, "secure-aggregation": True})
    max_weight = SecureAggregation.for_run(config, num_nodes=NUM_NODES).max_weight
    batch = config.batch_size
    sizes = partition_sizes(config, num_partitions=NUM_NODES)[:4]
    weights = [steps_per_epoch_for(n, batch) * batch for n in sizes]  # what DP clients send
    tolerance = quantization_tolerance(weights, max_weight=max_weight)
    # 4 survivors of equal-ish weight: about one quantization step 2 * 8 / 2**22.
    assert tolerance < 3 * 2 * CLIPPING_RANGE / QUANTIZATION_RANGE
    largest = max(float((model[name] - plain_model[name]).abs().max()) for name in plain_model)
    assert largest <= tolerance + 1e-7  # + float32 rounding of the stored weights
    assert largest > 0  # quantized: not the plain computation in disguise
    assert model.keys() == plain_model.keys()
    assert all(model[k].dtype == plain_model[k].dtype for k in plain_model)


class _ChangesLedger(DelegatingGrid):
    """A network that drops, or empties the steps of, one node's ledger in its masked reply."""

    def __init__(self, grid, *, node_id, how):
        super().__init__(grid)
        self.node_id, self.how = node_id, how

    def pull_messages(self, message_ids):
        replies = list(self.grid.pull_messages(message_ids))
        for reply in replies:
            masked = not reply.has_error() and "fitres.num_examples" in reply.content
            if masked and reply.metadata.src_node_id == self.node_id:
                if self.how == "drop":
                    del reply.content["privacy"]
                else:  # a ledger that hides this round's steps
                    ledger = reply.content["privacy"]
                    ledger["steps"] = [0 for _ in ledger["steps"]]
        return replies


def test_a_round_with_one_of_five_dropping_out_is_fedavg_of_the_four_survivors(
    tmp_path, capsys, plain_four
):
    secure = {"secure-aggregation": True, "secagg-num-shares": 3}
    # Node 5 shares its keys, then fails to train (partition 99 does not exist).
    rounds = _run(secure, _nodes([0, 1, 2, 3, 99]), tmp_path / "secagg")
    out = capsys.readouterr().out
    assert rounds[0].clients_trained == 4 and rounds[0].clients_failed == 1
    assert "partition-id 99 is out of range" in out and "global model unchanged" not in out
    assert sorted(p.name for p in (tmp_path / "secagg" / "privacy").iterdir()) == [
        f"partition-{i}.json" for i in range(4)
    ]
    plain_rounds, plain_model = plain_four  # the same four clients, seeds and noise
    assert plain_rounds[0].epsilon_max == rounds[0].epsilon_max  # the same ledgers
    _check_fedavg_of_first_four(tmp_path / "secagg", plain_model)


@pytest.mark.parametrize(
    ("how", "problem"),
    [
        ("drop", "reply carries no privacy ledger"),
        ("hide", "ledger of partition-4 holds 0 steps; at least"),
    ],
)
def test_a_reply_whose_ledger_fails_is_left_out_of_the_sum_as_a_dropout(
    tmp_path, capsys, plain_four, how, problem
):
    node_ids = [FIRST_NODE_ID + i for i in range(NUM_NODES)]
    rounds = _run(
        {"secure-aggregation": True},
        _nodes(range(NUM_NODES)),
        tmp_path / "run",
        tamper=lambda grid: _ChangesLedger(grid, node_id=node_ids[4], how=how),
    )
    out = capsys.readouterr().out
    assert f"node {node_ids[4]}: {problem}" in out
    assert rounds[0].clients_trained == 4 and rounds[0].clients_failed == 1
    # Partition 4 trained (its ledger on the node says so) but is not in the sum.
    _check_fedavg_of_first_four(tmp_path / "run", plain_four[1])


def test_two_dropouts_with_the_threshold_above_the_survivors_halt_the_round(tmp_path, capsys):
    values = {
        "secure-aggregation": True,
        "secagg-num-shares": 5,
        "secagg-reconstruction-threshold": 4,  # 3 survivors cannot rebuild a mask
    }
    rounds = _run(values, _nodes([0, 1, 2, 98, 99]), tmp_path / "run")
    out = capsys.readouterr().out
    assert "global model unchanged: secure aggregation halted" in out
    assert rounds[0].clients_failed == 2
    # The global model is the initial one: round 1 evaluated it as round 0 would.
    model = torch.load(tmp_path / "run" / "model.pt")
    torch.manual_seed(RUN["seed"])  # as the ServerApp builds the initial model
    from fedmodel.data import data_shape
    from fedmodel.models import build_model

    config = RunConfig.from_mapping({**RUN, **values})
    input_shape, num_classes = data_shape(config)
    initial = build_model(
        config.model,
        input_shape=input_shape,
        num_classes=num_classes,
        hidden_sizes=config.hidden_layer_sizes,
    ).state_dict()
    assert all(torch.equal(model[k], initial[k]) for k in initial)
    assert not math.isnan(rounds[0].test_accuracy)


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({"strategy": "krum"}, "'strategy' = 'krum'"),
        ({"strategy": "fedadam"}, "'strategy' = 'fedadam'"),
        ({"max-update-norm": 1.0}, "'max-update-norm'"),
        ({"update-compression": "int8"}, "'update-compression'"),
        ({"byzantine-fraction": 0.2}, "'byzantine-fraction'"),
        ({"resume": True, "run-dir": "/tmp/x"}, "'resume'"),
        ({"client-sampling": "poisson"}, "'client-sampling'"),
    ],
)
def test_combinations_that_need_each_update_are_refused_naming_the_key(values, names):
    with pytest.raises(ConfigError, match=names) as caught:
        RunConfig.from_mapping({"secure-aggregation": True, **values})
    assert "secure-aggregation" in str(caught.value)
    RunConfig.from_mapping(values)  # each is fine without secure aggregation


def test_user_level_privacy_composes_with_secure_aggregation():
    # DP-FedAvg over SecAgg+ (tests/server/test_secure_aggregation_user_level.py).
    RunConfig.from_mapping({"secure-aggregation": True, "privacy-unit": "user", "dp": False})
    RunConfig.from_mapping({"secure-aggregation": True, "privacy-unit": "both"})


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"secagg-num-shares": 2}, "secagg-num-shares"),
        ({"secagg-reconstruction-threshold": 3}, "secagg-reconstruction-threshold"),
        ({"secagg-reconstruction-threshold": 1}, "secagg-reconstruction-threshold"),
    ],
)
def test_share_and_threshold_ranges(values, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        RunConfig.from_mapping({"secure-aggregation": True, **values})


@pytest.mark.parametrize(
    ("values", "num_nodes", "problem"),
    [
        ({"secagg-num-shares": 5}, 4, "must be <= the 4 nodes"),
        ({"secagg-num-shares": 5, "fraction-train": 0.5}, 8, "must be <= the 4 nodes"),
        ({"secagg-num-shares": 4, "secagg-reconstruction-threshold": 2}, 5, "must be odd"),
        ({}, 2, "at least 3 sampled nodes"),
    ],
)
def test_shares_must_fit_the_sampled_cohort(values, num_nodes, problem):
    config = RunConfig.from_mapping({"secure-aggregation": True, **values})
    with pytest.raises(ConfigError, match=problem):
        SecureAggregation(config=config, num_nodes=num_nodes, max_weight=100.0)


def test_even_shares_are_fine_when_every_sampled_node_holds_one():
    values = {"secure-aggregation": True, "secagg-num-shares": 4}
    SecureAggregation(config=RunConfig.from_mapping(values), num_nodes=4, max_weight=1.0)


def test_the_tolerance_grows_as_max_weight_loosens():
    tight = quantization_tolerance([100, 100], max_weight=100)
    assert tight == pytest.approx(2 * CLIPPING_RANGE / QUANTIZATION_RANGE)
    assert quantization_tolerance([100, 100], max_weight=1000) == pytest.approx(10 * tight)
