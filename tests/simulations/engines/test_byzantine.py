"""Simulated Byzantine clients: chosen by the seed, corrupting exactly as documented, and
never in the ClientApp a deployment runs."""

import re

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from torch.utils.data import TensorDataset

from client.client_app import app
from fedmodel.config import BYZANTINE_ATTACKS, ConfigError, RunConfig
from fedmodel.data import data_shape
from fedmodel.data.sources import FederationData, hold, release
from fedmodel.models import build_model
from fedmodel.records import federation_to_record
from simulations import simulate
from simulations.engines.byzantine import (
    GAUSSIAN_STD,
    SCALE_FACTOR,
    ByzantineNodes,
    choose_nodes,
)
from simulations.engines.inprocess import FIRST_NODE_ID, InProcessGrid

SIMULATED = {"simulated": True}
VALUES = {"dp": False, "learning-rate": 0.5, "batch-size": 32, "hidden-sizes": "16"}
NODES = [FIRST_NODE_ID, FIRST_NODE_ID + 1]


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def _global(input_shape, num_classes) -> ArrayRecord:
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=input_shape, num_classes=num_classes, hidden_sizes=(16,))
    return ArrayRecord(model.state_dict())


def _train(grid: InProcessGrid, arrays: ArrayRecord, config: ConfigRecord) -> dict[int, Message]:
    """One training round of every node; one content shared by all, as FedAvg sends it."""
    content = RecordDict({"arrays": arrays, "config": config})
    messages = [grid.create_message(content, "train", n, group_id="1") for n in NODES]
    return {r.metadata.src_node_id: r for r in grid.pull_messages(grid.push_messages(messages))}


def _numpy(reply: Message) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in reply.content["arrays"].items()}


def _partition_grid(byzantine=None) -> InProcessGrid:
    nodes = [{**SIMULATED, "partition-id": i, "num-partitions": 10} for i in range(len(NODES))]
    config = RunConfig.from_mapping(VALUES).to_mapping()
    return InProcessGrid(client_app=app, run_config=config, node_configs=nodes, byzantine=byzantine)


def test_the_byzantine_nodes_are_chosen_by_the_seed_and_the_count_alone():
    ids = list(range(1001, 1021))
    chosen = choose_nodes(ids, fraction=0.2, seed=0)
    assert len(chosen) == 4 and set(chosen) <= set(ids) and chosen == sorted(chosen)
    assert choose_nodes(ids, fraction=0.2, seed=0) == chosen
    assert choose_nodes(ids, fraction=0.2, seed=1) != chosen
    assert len(choose_nodes(ids[:10], fraction=0.25, seed=0)) == 2  # round(2.5), Python's
    config = RunConfig.from_mapping({"byzantine-fraction": 0.2, "byzantine-attack": "nan"})
    nodes = ByzantineNodes.from_config(config, node_ids=ids)
    assert nodes == ByzantineNodes(nodes=frozenset(chosen), attack="nan", seed=0)
    assert ByzantineNodes.from_config(RunConfig(), node_ids=ids) is None
    line = nodes.describe({1001 + i: f"partition-{i}" for i in range(20)})
    assert line.startswith("Byzantine nodes (simulation, byzantine-attack = 'nan'): ")
    assert line.endswith("they send all-NaN weights")
    assert all(f"(node {n})" in line for n in chosen)


@pytest.mark.parametrize("attack", ["sign-flip", "scale", "gaussian", "nan"])
def test_each_attack_corrupts_the_byzantine_nodes_update_as_documented(attack):
    arrays = _global(*data_shape(RunConfig.from_mapping(VALUES)))
    config = ConfigRecord({"server-round": 1})
    honest = _train(_partition_grid(), arrays, config)
    attacked = _train(
        _partition_grid(ByzantineNodes(nodes=frozenset({NODES[0]}), attack=attack, seed=0)),
        arrays,
        config,
    )
    for name, array in _numpy(honest[NODES[1]]).items():  # the other node is untouched
        np.testing.assert_array_equal(_numpy(attacked[NODES[1]])[name], array)
    sent = {name: a.numpy().astype(np.float64) for name, a in arrays.items()}
    bad, good = _numpy(attacked[NODES[0]]), _numpy(honest[NODES[0]])
    for name, g in sent.items():
        update = good[name].astype(np.float64) - g
        expected = {
            "sign-flip": g - update,
            "scale": g + SCALE_FACTOR * update,
        }.get(attack)
        assert bad[name].dtype == good[name].dtype and bad[name].shape == good[name].shape
        if expected is not None:
            np.testing.assert_allclose(bad[name], expected.astype(np.float32), rtol=1e-6)
        elif attack == "nan":
            assert np.isnan(bad[name]).all()
    if attack == "gaussian":
        noise = np.concatenate([(bad[n].astype(np.float64) - g).ravel() for n, g in sent.items()])
        assert abs(noise.mean()) < 0.1 and abs(noise.std() - GAUSSIAN_STD) < 0.1
    # What is not the update stays honest: the metrics (and, under DP, the ledger).
    assert dict(attacked[NODES[0]].content["metrics"]) == dict(honest[NODES[0]].content["metrics"])


def test_label_flip_sends_what_training_on_labels_c_minus_1_minus_y_sends():
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(60, 12, generator=generator)
    y = torch.arange(60) % 4
    config = RunConfig.from_mapping({**VALUES, "dataset": "custom", "num-classes": 4})
    message_config = federation_to_record(FederationData(input_shape=(12,), num_classes=4))
    message_config["server-round"] = 1
    arrays = _global((12,), 4)
    flipped, true = hold(TensorDataset(x, 3 - y)), hold(TensorDataset(x, y))

    def grid(first: str, byzantine=None) -> InProcessGrid:
        # Both nodes partition-id 0: the same training seed; node 2 holds the true labels.
        nodes = [{**SIMULATED, "partition-id": 0, "data-path": data} for data in (first, true)]
        return InProcessGrid(
            client_app=app, run_config=config.to_mapping(), node_configs=nodes,
            byzantine=byzantine,
        )

    label_flip = ByzantineNodes(nodes=frozenset({NODES[0]}), attack="label-flip", seed=0)
    try:
        reference = _train(grid(flipped), arrays, message_config)
        attacked = _train(grid(true, label_flip), arrays, message_config)
    finally:
        release(flipped)
        release(true)
    sent, trained_on_flipped = _numpy(attacked[NODES[0]]), _numpy(reference[NODES[0]])
    honest = _numpy(reference[NODES[1]])
    for name, array in trained_on_flipped.items():
        np.testing.assert_allclose(sent[name], array, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(_numpy(attacked[NODES[1]])[name], honest[name])
    assert not np.allclose(sent["layers.3.weight"], honest["layers.3.weight"])  # not vacuous


@pytest.mark.parametrize("attack", BYZANTINE_ATTACKS)
def test_the_client_app_a_deployment_runs_sends_an_honest_update_whatever_the_keys(
    attack, tmp_path
):
    """A deployed node (not simulated, DP on, its own state-dir) given the keys trains and
    replies exactly as without them: the ClientApp never reads them."""
    values = {
        "target-epsilon": 0.0, "noise-multiplier": 1.0, "batch-size": 32, "hidden-sizes": "16"
    }
    arrays = _global(*data_shape(RunConfig.from_mapping(values)))
    replies = []
    for name, extra in [
        ("plain", {}),
        ("keyed", {"byzantine-fraction": 0.5, "byzantine-attack": attack}),
    ]:
        node = {"partition-id": 0, "num-partitions": 10, "noise-source": "seeded",
                "state-dir": str(tmp_path / name)}
        context = Context(
            run_id=1, node_id=FIRST_NODE_ID, node_config=node, state=RecordDict(),
            run_config=RunConfig.from_mapping({**values, **extra}).to_mapping(),
        )
        content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})})
        message = Message(content, FIRST_NODE_ID, "train")
        message.metadata.__dict__["_message_id"] = f"to-{name}"
        reply = app(message, context)
        assert not reply.has_error(), reply.error.reason
        replies.append(_numpy(reply))
    plain, keyed = replies
    for name, array in plain.items():
        assert np.isfinite(keyed[name]).all()
        np.testing.assert_array_equal(keyed[name], array)


def test_the_ray_engine_refuses_byzantine_clients(tmp_path):
    values = {"byzantine-fraction": 0.2, "run-dir": str(tmp_path / "run")}
    with pytest.raises(ConfigError, match="in-process engine only"):
        simulate(values, engine="ray", num_clients=5)
    assert not (tmp_path / "run").exists()


def test_an_in_process_run_names_its_byzantine_nodes_once_and_keeps_them(tmp_path, capsys):
    result = simulate(
        {
            **VALUES, "num-server-rounds": 2, "run-dir": str(tmp_path / "run"),
            "byzantine-fraction": 0.4, "byzantine-attack": "scale",
            "max-update-norm": 50.0, "update-norm-policy": "reject",
        },
        num_clients=5,
    )
    out = capsys.readouterr().out
    (line,) = [row for row in out.splitlines() if row.startswith("Byzantine nodes")]
    named = set(re.findall(r"\(node (\d+)\)", line))
    assert len(named) == 2 and "send global + 1000 x update" in line
    rounds = out.split("round 2/2")
    for part in rounds:  # the same nodes' updates, over the bound, every round
        assert set(re.findall(r"rejected: node (\d+): update norm", part)) == named
    assert [r.clients_rejected for r in result.rounds] == [2, 2]


@pytest.mark.slow
def test_the_worker_pool_applies_the_attack_as_the_sequential_engine_does(tmp_path):
    values = {
        **VALUES, "num-server-rounds": 1, "byzantine-fraction": 0.4,
        "byzantine-attack": "label-flip",
    }
    models = []
    for workers in (0, 1):
        run = simulate({**values, "run-dir": str(tmp_path / f"w{workers}")}, num_clients=5,
                       workers=workers)
        models.append(torch.load(run.run_dir / "model.pt"))
    for name, tensor in models[0].items():
        assert torch.equal(models[1][name], tensor)
