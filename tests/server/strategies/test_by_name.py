"""Flower's strategies by run-config name: the class, its parameters, a short run of each."""

from __future__ import annotations

import inspect
import math
import re

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    QFedAvg,
)
from flwr.supercore.task_identity import TaskIdentity

from fedmodel.config import ConfigError, RunConfig
from fedmodel.strategies import STRATEGIES
from server.strategies.by_name import (
    FLOWER_CLASSES,
    FLOWER_PARAMETERS,
    STRATEGY_CLASSES,
    KeepsModelDtypes,
    build_strategy,
    check_federation_size,
    required_updates,
    strategy_arguments,
    strategy_line,
)
from simulations import simulate

SAMPLING = {
    "fraction_evaluate": 0.5,
    "min_train_nodes": 3,
    "min_evaluate_nodes": 1,
    "min_available_nodes": 3,
}

# name -> (run-config parameters, Flower's class, attributes it must then hold)
CASES = {
    "fedavg": ({}, FedAvg, {}),
    "fedavgm": (
        {"server-learning-rate": 0.5, "server-momentum": 0.9},
        FedAvgM,
        {"server_learning_rate": 0.5, "server_momentum": 0.9},
    ),
    "fedprox": ({"proximal-mu": 0.01}, FedProx, {"proximal_mu": 0.01}),
    "fedadam": (
        {"server-learning-rate": 0.05, "tau": 0.01, "beta-1": 0.5, "beta-2": 0.9},
        FedAdam,
        {"eta": 0.05, "tau": 0.01, "beta_1": 0.5, "beta_2": 0.9},
    ),
    "fedyogi": (
        {"server-learning-rate": 0.02, "tau": 0.1, "beta-1": 0.8, "beta-2": 0.95},
        FedYogi,
        {"eta": 0.02, "tau": 0.1, "beta_1": 0.8, "beta_2": 0.95},
    ),
    "fedadagrad": (
        {"server-learning-rate": 0.2, "tau": 0.05},
        FedAdagrad,
        {"eta": 0.2, "tau": 0.05},
    ),
    "fedmedian": ({}, FedMedian, {}),
    "fedtrimmedavg": ({"trim-beta": 0.3}, FedTrimmedAvg, {"beta": 0.3}),
    "krum": ({"num-malicious-nodes": 2}, Krum, {"num_malicious_nodes": 2}),
    "multikrum": (
        {"num-malicious-nodes": 1, "num-nodes-to-select": 3},
        MultiKrum,
        {"num_malicious_nodes": 1, "num_nodes_to_select": 3},
    ),
    "bulyan": ({"num-malicious-nodes": 1}, Bulyan, {"num_malicious_nodes": 1}),
    "qfedavg": (
        {"q-fair": 0.5, "dp": False, "learning-rate": 0.3},
        QFedAvg,
        {"q": 0.5, "client_learning_rate": 0.3, "train_loss_key": "train-loss"},
    ),
}


def _config(name: str, parameters: dict) -> RunConfig:
    return RunConfig.from_mapping({"strategy": name, "fraction-train": 0.6, **parameters})


def test_every_registered_strategy_has_a_flower_class_and_maps_exactly_the_keys_it_reads():
    assert set(FLOWER_CLASSES) == set(STRATEGY_CLASSES) == set(STRATEGIES) == set(CASES)
    for name in STRATEGIES:
        assert set(FLOWER_PARAMETERS[name]) == set(STRATEGIES.get(name).reads), name
        accepted = inspect.signature(FLOWER_CLASSES[name]).parameters
        assert set(FLOWER_PARAMETERS[name].values()) <= set(accepted), name


@pytest.mark.parametrize("name", list(CASES))
def test_each_name_builds_flowers_class_with_the_given_parameters(name):
    parameters, cls, attributes = CASES[name]
    strategy = build_strategy(_config(name, parameters), **SAMPLING)
    assert FLOWER_CLASSES[name] is cls
    assert type(strategy).__bases__ == (KeepsModelDtypes, cls)  # Flower's, dtypes kept
    assert type(strategy).__name__ == cls.__name__
    for attribute, value in attributes.items():
        assert getattr(strategy, attribute) == value, attribute
    assert strategy.fraction_train == 0.6
    assert strategy.fraction_evaluate == 0.5
    assert (strategy.min_train_nodes, strategy.min_evaluate_nodes) == (3, 1)
    assert strategy.min_available_nodes == 3


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_a_zero_parameter_leaves_flowers_default(name):
    config = _config(name, {"dp": True})  # server-learning-rate, tau, beta-1, beta-2 all 0
    strategy = build_strategy(config, **SAMPLING)
    defaults = inspect.signature(FLOWER_CLASSES[name]).parameters
    zero_means_default = {"server-learning-rate", "tau", "beta-1", "beta-2"}
    for key, argument in FLOWER_PARAMETERS[name].items():
        if key in zero_means_default:
            assert getattr(strategy, argument) == defaults[argument].default, argument
            assert getattr(strategy, argument) != 0, argument
    # FedAdam's and FedYogi's server learning rates differ: each keeps its own.
    if name in ("fedadam", "fedyogi"):
        assert strategy.eta == {"fedadam": 0.1, "fedyogi": 0.01}[name]


def test_the_log_line_names_the_class_the_paper_and_the_values_flower_uses():
    config = _config("fedadam", {"tau": 0.01})
    line = strategy_line(config, build_strategy(config, **SAMPLING))
    assert line.startswith("strategy: FedAdam (Reddi et al. 2021")
    assert line.endswith("eta 0.1, tau 0.01, beta_1 0.9, beta_2 0.99")


@pytest.mark.parametrize(
    ("name", "parameters", "needed"),
    [
        ("krum", {"num-malicious-nodes": 1}, 5),
        ("multikrum", {"num-malicious-nodes": 1, "num-nodes-to-select": 6}, 7),
        ("multikrum", {"num-malicious-nodes": 2}, 7),
        ("bulyan", {"num-malicious-nodes": 0}, 3),
        ("bulyan", {"num-malicious-nodes": 2}, 11),
        ("fedmedian", {}, 1),
    ],
)
def test_robust_strategies_need_enough_updates_per_round(name, parameters, needed):
    config = RunConfig.from_mapping({"strategy": name, **parameters})
    assert required_updates(config) == needed
    check_federation_size(config, num_nodes=needed, min_train_nodes=1)
    if needed > 1:
        with pytest.raises(ConfigError, match=f"needs at least {needed} updates per round"):
            check_federation_size(config, num_nodes=needed - 1, min_train_nodes=1)


def test_too_few_sampled_nodes_is_refused_with_the_numbers():
    config = RunConfig.from_mapping(
        {"strategy": "bulyan", "num-malicious-nodes": 1, "fraction-train": 0.5}
    )
    with pytest.raises(ConfigError) as error:
        check_federation_size(config, num_nodes=10, min_train_nodes=1)
    message = str(error.value)
    assert "'bulyan' needs at least 7 updates per round (4 * num-malicious-nodes + 3" in message
    assert "El Mhamdi et al. 2018" in message
    assert "the federation has 10 nodes and fraction-train = 0.5 samples 5 per round" in message
    assert message.endswith("add nodes, raise fraction-train or lower num-malicious-nodes")
    check_federation_size(config, num_nodes=14, min_train_nodes=1)  # samples 7


# -- the aggregate keeps the model's dtypes ----------------------------------------------


class _Grid:
    """Just enough of a Grid for configure_train: 7 nodes."""

    def get_node_ids(self) -> list[int]:
        return list(range(1, 8))


@pytest.fixture
def _task_identity(monkeypatch):
    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def _one_round(strategy, seed: int = 0):
    rng = np.random.default_rng(seed)
    model = [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)]
    list(strategy.configure_train(1, ArrayRecord(model), ConfigRecord(), _Grid()))
    replies = []
    for node in range(1, 8):
        update = [w + rng.normal(scale=0.1, size=w.shape).astype(np.float32) for w in model]
        metrics = MetricRecord({"num-examples": 10 + node, "train-loss": 1.0 + node / 10})
        content = RecordDict({"arrays": ArrayRecord(update), "metrics": metrics})
        replies.append(Message(content, node, "train"))
    arrays, _ = strategy.aggregate_train(1, replies)
    return arrays


@pytest.mark.usefixtures("_task_identity")
@pytest.mark.parametrize("name", list(CASES))
def test_the_aggregate_keeps_the_models_dtypes_and_flowers_values(name):
    config = _config(name, CASES[name][0]).replace(fraction_train=1.0)
    ours = _one_round(build_strategy(config, **SAMPLING))
    arguments = {**SAMPLING, **strategy_arguments(config)}
    flowers = _one_round(FLOWER_CLASSES[name](fraction_train=1.0, **arguments))
    for key, array in ours.items():
        assert array.dtype == "float32", key
        expected = flowers[key].numpy()
        if expected.dtype == np.float32:  # nothing to cast: Flower's aggregate, bit for bit
            assert np.array_equal(array.numpy(), expected), key
        else:  # FedAdam, q-FedAvg: Flower's float64 values, as float32
            assert np.array_equal(array.numpy(), expected.astype(np.float32)), key


# -- each strategy, two rounds in-process ------------------------------------------------

RUNS = {
    "fedavg": {},
    "fedavgm": {"server-momentum": 0.5},
    "fedprox": {"proximal-mu": 0.1},
    "fedadam": {},
    "fedyogi": {},
    "fedadagrad": {},
    "fedmedian": {},
    "fedtrimmedavg": {},
    "krum": {"num-malicious-nodes": 1},
    "multikrum": {"num-malicious-nodes": 1, "num-nodes-to-select": 3},
    "bulyan": {"num-malicious-nodes": 1},  # 4f + 3 = 7 clients
    "qfedavg": {"dp": False},  # q-FedAvg needs the training loss: DP off
}
CLIENTS = {"bulyan": 7}


@pytest.mark.parametrize("name", list(RUNS))
def test_each_strategy_runs_two_rounds_to_a_finite_model_above_chance(name, tmp_path, capsys):
    run_dir = tmp_path / "run"
    config = {"strategy": name, "num-server-rounds": 2, "batch-size": 32, **RUNS[name]}
    result = simulate({**config, "run-dir": str(run_dir)}, num_clients=CLIENTS.get(name, 5))
    assert len(result.rounds) == 2
    assert all(r.clients_trained == CLIENTS.get(name, 5) for r in result.rounds)
    assert math.isfinite(result.final.test_loss)
    assert result.final.test_accuracy > 0.1  # chance on 10 digits
    state = torch.load(run_dir / "model.pt")
    assert all(torch.isfinite(v).all() for v in state.values())
    if name != "fedavg":
        shown = type(build_strategy(RunConfig.from_mapping(config), **SAMPLING)).__name__
        assert f"strategy: {shown} (" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("config", "num_clients", "message"),
    [
        (
            {"strategy": "fedavg", "tau": 0.1},
            5,
            "run-config key 'tau' = 0.1 is not read by strategy 'fedavg'",
        ),
        (
            {"strategy": "krum", "trim-beta": 0.3},
            5,
            "run-config key 'trim-beta' = 0.3 is not read by strategy 'krum'",
        ),
        (
            {"strategy": "bulyan", "num-malicious-nodes": 1},
            5,
            "strategy 'bulyan' needs at least 7 updates per round (4 * num-malicious-nodes + 3 "
            "= 4 * 1 + 3; El Mhamdi et al. 2018",
        ),
        (
            {"strategy": "krum", "num-malicious-nodes": 1},
            4,
            "the federation has 4 nodes and fraction-train = 1 samples 4 per round",
        ),
        (
            {"strategy": "fedprox", "proximal-mu": 1.0},
            5,
            "run-config key 'proximal-mu' = 1.0 is out of range: must be below 1 / "
            "learning-rate = 1",
        ),
    ],
)
def test_invalid_combinations_fail_before_anything_is_written(
    tmp_path, config, num_clients, message
):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=re.escape(message)):
        simulate({**config, "run-dir": str(run_dir)}, num_clients=num_clients)
    assert not run_dir.exists()
