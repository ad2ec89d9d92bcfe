"""User-level DP (DP-FedAvg) composed with SecAgg+: clipped on the clients, noised after unmasking.

The federation runs in this process as in ``test_secure_aggregation.py`` (the same
``_run`` helper). Clients train without DP-SGD (``privacy-unit = "user"``), so each
client's update is a deterministic function of its partition, and the expected global
model can be computed here from the clients' own replies to a plain train message.
"""

import json
import logging

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.supercore.task_identity import TaskIdentity

from client.client_app import app as client_app
from fedmodel.config import ConfigError, RunConfig
from fedmodel.data import data_shape
from fedmodel.models import build_model, model_settings
from fedmodel.privacy.user_level import user_level_plan
from server.secure_aggregation import (
    SECAGG_USER_MECHANISM,
    SecureAggregation,
    quantization_tolerance,
)
from simulations.engines.inprocess import FIRST_NODE_ID
from tests.server.test_secure_aggregation import _run

dp_accounting = pytest.importorskip("dp_accounting")
logging.getLogger("absl").setLevel(logging.ERROR)

NUM_NODES = 5
USER = {
    "secure-aggregation": True,
    "privacy-unit": "user",
    "dp": False,  # "user": central DP alone, the clients train without DP-SGD
    "num-server-rounds": 1,
    "seed": 3,
}


def _nodes(partition_ids, num_partitions=NUM_NODES):
    return [
        {"simulated": True, "partition-id": i, "num-partitions": num_partitions}
        for i in partition_ids
    ]


def _initial_model(config: RunConfig) -> dict[str, torch.Tensor]:
    torch.manual_seed(config.seed)  # as the ServerApp builds the initial model
    input_shape, num_classes = data_shape(config)
    model = build_model(
        config.model,
        input_shape=input_shape,
        num_classes=num_classes,
        settings=model_settings(config),
    )
    return model.state_dict()


def _trained(config: RunConfig, initial, *, partition_id: int) -> dict[str, torch.Tensor]:
    """What a client sends for round 1 without secure aggregation (the same training)."""
    plain = config.replace(secure_aggregation=False)
    message = Message(
        RecordDict({"arrays": ArrayRecord(initial), "config": ConfigRecord({"server-round": 1})}),
        dst_node_id=FIRST_NODE_ID + partition_id,
        message_type=MessageType.TRAIN,
        group_id="1",
    )
    context = Context(
        run_id=1,
        node_id=FIRST_NODE_ID + partition_id,
        node_config=_nodes([partition_id])[0],
        state=RecordDict(),
        run_config=plain.to_mapping(),
    )
    reply = client_app(message, context)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    return reply.content["arrays"].to_torch_state_dict()


def test_a_round_with_a_dropout_is_the_clipped_sum_of_the_survivors_over_m(
    tmp_path, capsys, monkeypatch
):
    clipping_norm, z = 0.1, 1e-6  # z tiny: the noise (std z * C / m = 2e-8) is negligible
    values = {**USER, "user-clipping-norm": clipping_norm, "user-noise-multiplier": z}
    # Node 5 shares its keys, then fails to train: a dropout, counted as a zero update.
    rounds = _run(values, _nodes([0, 1, 2, 3, 99]), tmp_path / "run")
    out = capsys.readouterr().out
    assert rounds[0].clients_trained == 4 and rounds[0].clients_failed == 1
    assert "global model unchanged" not in out

    for name in ("_task_id", "_run_id", "_node_id"):  # as a runtime stamps messages
        monkeypatch.setattr(TaskIdentity, name, 1)
    config = RunConfig.from_mapping(values)
    initial = _initial_model(config)
    m = user_level_plan(config, population=NUM_NODES).clients_per_round
    assert m == NUM_NODES  # fraction-train 1: the fixed denominator is the whole cohort
    expected = {k: v.double().clone() for k, v in initial.items()}
    norms = []
    for partition_id in range(4):
        trained = _trained(config, initial, partition_id=partition_id)
        update = {k: trained[k].double() - initial[k].double() for k in initial}
        norm = float(torch.sqrt(sum((u**2).sum() for u in update.values())))
        norms.append(norm)
        scale = min(1.0, clipping_norm / norm)  # Flower's flat clipping (McMahan et al.)
        for k in expected:
            expected[k] += scale * update[k] / m
    assert min(norms) > clipping_norm  # every update really was clipped

    model = torch.load(tmp_path / "run" / "model.pt")
    assert model.keys() == initial.keys()
    # Quantization of each weight-1 update (one step on the mean of 4), scaled by 4 / m,
    # then the noise (8 standard deviations) and float32 rounding of the stored weights.
    max_weight = SecureAggregation.for_run(config, num_nodes=NUM_NODES).max_weight
    assert max_weight == 1.0
    tolerance = quantization_tolerance([1.0] * 4, max_weight=max_weight) * 4 / m
    tolerance += 8 * z * clipping_norm / m + 1e-7
    largest = max(float((model[k].double() - expected[k]).abs().max()) for k in expected)
    assert largest <= tolerance
    # Discriminating: dividing by the 4 survivors instead of m = 5 would move the values
    # by a quarter of their update, far beyond the tolerance (as would not clipping).
    quarter = max(float((expected[k] - initial[k].double()).abs().max()) for k in expected) / 4
    assert quarter > 10 * tolerance

    report = json.loads((tmp_path / "run" / "privacy.json").read_text())
    assert report["secure_aggregation"] is True
    assert report["user_level"]["mechanism"] == SECAGG_USER_MECHANISM
    assert report["user_level"]["rounds_composed"] == 1


def _dp_accounting_epsilon(*, population, cohort, z, rounds, delta):
    """Google's dp_accounting for ``rounds`` fixed cohorts: replace-one, sensitivity 2C."""
    accountant = dp_accounting.rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        population, cohort, dp_accounting.GaussianDpEvent(z / 2)
    )
    accountant.compose(event, rounds)
    return accountant.get_epsilon(delta)


def test_user_level_epsilon_is_accounted_each_round_and_the_budget_stops_the_run(tmp_path, capsys):
    num_nodes, z, delta = 6, 1.0, 1e-5
    cohort = 3  # fraction-train 0.5 of 6 nodes; 3 shares fit it
    eps = [
        _dp_accounting_epsilon(population=num_nodes, cohort=cohort, z=z, rounds=r, delta=delta)
        for r in (1, 2, 3)
    ]
    values = {
        **USER,
        "num-server-rounds": 3,
        "fraction-train": 0.5,
        "user-noise-multiplier": z,
        "delta": delta,
        "max-epsilon": (eps[1] + eps[2]) / 2,  # room for 2 rounds, not 3
    }
    run_dir = tmp_path / "run"
    rounds = _run(values, _nodes(range(num_nodes), num_partitions=12), run_dir)
    out = capsys.readouterr().out
    assert [r.round for r in rounds] == [1, 2]  # round 3 never started
    for r, expected in zip(rounds, eps, strict=False):
        assert r.user_epsilon == pytest.approx(expected, abs=1e-6)
        assert r.clients_trained == cohort
    assert "Privacy budget reached, stopping before round 3" in out
    assert f"user-level ε = {eps[1]:.4f} at δ = {delta:g} (RDP accountant, 2 noised rounds" in out
    report = json.loads((run_dir / "privacy.json").read_text())
    assert report["stopped"].startswith("stopping before round 3")
    user = report["user_level"]
    assert user["rounds_composed"] == 2 and user["epsilon"] == pytest.approx(eps[1], abs=1e-6)
    assert user["sampling"] == "fixed" and user["neighbouring_relation"] == "replace-one"
    assert [row["updates"] for row in user["per_round"]] == [cohort, cohort]


def test_adaptive_clipping_is_refused_with_secure_aggregation():
    with pytest.raises(ConfigError, match="'user-clipping' = 'adaptive'.*secure-aggregation"):
        RunConfig.from_mapping({**USER, "user-clipping": "adaptive"})
    RunConfig.from_mapping(USER)  # fixed clipping composes


def test_poisson_client_sampling_is_still_refused_with_the_reason():
    with pytest.raises(ConfigError, match="'client-sampling' = 'poisson'.*fixed cohort"):
        RunConfig.from_mapping({**USER, "client-sampling": "poisson"})


def test_both_units_compose_record_level_ledgers_still_checked(tmp_path, capsys):
    values = {
        **USER,
        "privacy-unit": "both",
        "dp": True,  # record-level DP-SGD on every client, user-level DP-FedAvg on top
        "noise-multiplier": 1.0,
        "target-epsilon": 0.0,
    }
    rounds = _run(values, _nodes(range(NUM_NODES)), tmp_path / "run")
    out = capsys.readouterr().out
    assert rounds[0].clients_trained == NUM_NODES and rounds[0].epsilon_max > 0
    assert rounds[0].user_epsilon > 0 and "user-level ε" in out
    report = json.loads((tmp_path / "run" / "privacy.json").read_text())
    assert report["units"] == ["record-level", "user-level"]
    assert len(report["record_level"]["clients"]) == NUM_NODES  # every ledger accepted
