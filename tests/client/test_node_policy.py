"""The node decides its privacy: refusals, secret randomness, and what a reply may carry."""

import math

import pytest
import torch
from flwr.app import Context, RecordDict

from fedmodel.config import RunConfig
from fedmodel.data import partition_sizes
from fedmodel.privacy.client_privacy import ClientPrivacy, PrivacyRequest
from fedmodel.privacy.ledger import epsilon_of
from fedmodel.privacy.node_policy import NodePolicy
from fedmodel.training import steps_per_epoch_for
from tests.client.test_client_app_state_dir import (
    VALUES,
    context_for,
    send_train,
    train_ok,
)


def _refusal(reply) -> str:
    assert reply.has_error(), "the node trained although its policy forbids it"
    return reply.error.reason


def test_a_deployed_node_uses_secure_randomness_and_requires_dp_and_a_ledger(tmp_path):
    policy = NodePolicy.from_node_config({"partition-id": 0}, environ={})
    assert (policy.noise_source, policy.require_dp, policy.simulated) == ("secure", True, False)
    simulated = NodePolicy.from_node_config({"simulated": True}, environ={})
    assert (simulated.noise_source, simulated.require_dp) == ("seeded", False)
    assert NodePolicy.from_node_config({}, environ={"FEDMODEL_SIMULATED_NODES": "1"}).simulated
    reason = _refusal(send_train(context_for(1), 1))  # no state-dir
    assert "PolicyRefusal" in reason and "state-dir" in reason
    reason = _refusal(send_train(context_for(1, tmp_path, dp=False), 1))
    assert "require-dp" in reason
    assert list(tmp_path.iterdir()) == []  # refused before anything was trained or stored


def test_the_node_refuses_too_little_noise_a_foreign_accountant_and_a_spent_budget(tmp_path):
    strict = {"min-noise-multiplier": 2.0}
    assert "min-noise-multiplier" in _refusal(send_train(context_for(1, tmp_path, strict), 1))
    only_rdp = {"allowed-accountants": "rdp"}
    reason = _refusal(send_train(context_for(1, tmp_path, only_rdp, accountant="prv"), 1))
    assert "allowed-accountants" in reason
    budget = {"max-epsilon": 1.0}
    first = train_ok(context_for(2, tmp_path, budget), 1)  # noise 1.5: about 0.6 per round
    assert float(first.content["privacy"]["epsilon"]) <= 1.0
    reason = _refusal(send_train(context_for(3, tmp_path, budget), 1))
    assert "max-epsilon = 1" in reason
    # The refused round left nothing in the ledger: a later, allowed run starts from 1 round.
    later = train_ok(context_for(4, tmp_path), 1)
    size = partition_sizes(RunConfig.from_mapping(VALUES), num_partitions=2)[0]
    assert sum(later.content["privacy"]["steps"]) == 2 * steps_per_epoch_for(size, 32)


def test_target_epsilon_holds_across_runs_and_rounds_past_the_plan_are_refused(tmp_path):
    target = {"target-epsilon": 2.0, "num-server-rounds": 2}
    run_one = context_for(1, tmp_path, **target)
    epsilons = [float(train_ok(run_one, r).content["privacy"]["epsilon"]) for r in (1, 2)]
    assert epsilons[-1] <= 2.0
    assert "past the run's plan" in _refusal(send_train(run_one, 3))
    # A second run with the same target calibrates against what remains: far more noise.
    again = train_ok(context_for(2, tmp_path, **target), 1).content["privacy"]
    assert float(again["noise-multiplier"]) > 5 * float(again["sigmas"][0])
    assert epsilons[-1] < float(again["epsilon"]) <= 2.0
    # A target below what is already spent cannot be kept: refused, nothing trained.
    reason = _refusal(send_train(context_for(3, tmp_path, **{**target, "target-epsilon": 1.5}), 1))
    assert "target-epsilon cannot be kept" in reason


def test_secure_noise_differs_between_runs_with_one_seed_and_seeded_noise_repeats(tmp_path):
    def update(node, state_dir):
        reply = train_ok(context_for(1, state_dir, node), 1)
        return reply.content["arrays"].to_torch_state_dict()

    secure = [update({}, tmp_path / f"s{i}") for i in range(2)]
    seeded = [update({"noise-source": "seeded"}, tmp_path / f"d{i}") for i in range(2)]
    assert all(torch.equal(seeded[0][k], seeded[1][k]) for k in seeded[0])
    assert not any(torch.equal(secure[0][k], secure[1][k]) for k in secure[0])


def test_under_dp_a_training_reply_carries_only_public_fields(tmp_path):
    reply = train_ok(context_for(1, tmp_path), 1)
    assert sorted(reply.content) == ["arrays", "metrics", "privacy"]
    metrics = dict(reply.content["metrics"])
    size = partition_sizes(RunConfig.from_mapping(VALUES), num_partitions=2)[0]
    steps = steps_per_epoch_for(size, 32)
    # No training loss; the weight is ceil(N / B) * B, which q and the steps already imply.
    assert metrics == {"num-examples": steps * 32, "steps": steps}
    assert sorted(reply.content["privacy"]) == [
        "accountant", "client", "delta", "epsilon", "noise-multiplier", "noise-source",
        "sample-rates", "sigmas", "steps",
    ]
    assert reply.content["privacy"]["noise-source"] == "secure"


def test_under_dp_a_node_without_a_held_out_split_refuses_to_evaluate(tmp_path):
    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType

    from client.client_app import app
    from fedmodel.models import build_model

    model = build_model("mlp", input_shape=(64,), num_classes=10, hidden_sizes=(64,))
    content = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "config": ConfigRecord({"server-round": 1})}
    )
    context = context_for(1, tmp_path)
    reply = app(Message(content, dst_node_id=5, message_type=MessageType.EVALUATE), context)
    assert "held-out split" in _refusal(reply)
    context = context_for(1, tmp_path, dp=False)
    reply = app(Message(content, dst_node_id=5, message_type=MessageType.EVALUATE), context)
    assert not reply.has_error()


@pytest.mark.parametrize("num_examples", [737, 744, 785])  # int(1 / q) < ceil(N / 8) here
def test_sizes_where_opacus_would_take_one_step_fewer_stay_within_the_target(num_examples):
    request = PrivacyRequest(
        dp=True, noise_multiplier=1.0, target_epsilon=3.0, delta=1e-5, accountant="rdp",
        num_server_rounds=3, local_epochs=1, batch_size=8,
    )
    policy = NodePolicy(simulated=True, noise_source="seeded")
    privacy = ClientPrivacy(policy=policy, request=request, run_id=1, data={"data-id": "x"})
    from torch.utils.data import TensorDataset

    from fedmodel.models import build_model
    from fedmodel.training import TrainingSettings, train_locally

    data = TensorDataset(torch.randn(num_examples, 4), torch.randint(0, 2, (num_examples,)))
    model = build_model("mlp", input_shape=(4,), num_classes=2, hidden_sizes=(4,))
    for server_round in (1, 2, 3):
        plan = privacy.plan_round(num_examples=num_examples, server_round=server_round)
        before = privacy.ledger.steps
        result = train_locally(
            model, data, ledger=privacy.ledger, seed=server_round,
            settings=TrainingSettings(
                epochs=1, batch_size=8, learning_rate=0.1, noise_multiplier=plan.noise_multiplier
            ),
        )
        assert result.steps == math.ceil(num_examples / 8)
        total = privacy.record_round(plan, steps_before=before)
    assert total.steps == 3 * math.ceil(num_examples / 8)
    assert epsilon_of(total.history, delta=1e-5, accountant="rdp") <= 3.0


def test_a_context_cannot_carry_another_datas_state(tmp_path):
    first = context_for(1, tmp_path)
    train_ok(first, 1)
    moved = Context(
        run_id=1, node_id=5, node_config={**first.node_config, "partition-id": 1},
        state=first.state, run_config=first.run_config,
    )
    reply = send_train(moved, 2)
    assert reply.has_error() and reply.error.reason.startswith("ValueError")


def test_under_dp_query_and_evaluate_replies_carry_only_public_fields(tmp_path):
    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType

    from client.client_app import app
    from fedmodel.data.sources import FederationData
    from fedmodel.models import build_model
    from fedmodel.records import federation_to_record

    node = {"data-path": "simulations.examples.custom_data:digits", "state-dir": str(tmp_path)}
    context = Context(
        run_id=1, node_id=5, node_config=node, state=RecordDict(),
        run_config=RunConfig.from_mapping({"dataset": "custom", "num-classes": 10}).to_mapping(),
    )
    query = Message(RecordDict({"config": ConfigRecord()}), dst_node_id=5,
                    message_type=MessageType.QUERY)
    data = dict(app(query, context).content["data"])
    # 1437 training records: the node says ceil(1437 / 64) * 64, and no class names.
    assert data == {
        "input-shape": [1, 8, 8], "num-classes": 10, "num-examples": 1472,
        "class-names": [], "origin": "simulations.examples.custom_data:digits",
        "has-held-out-split": True,
    }
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden_sizes=(64,))
    federation = federation_to_record(FederationData(input_shape=(1, 8, 8), num_classes=10))
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": federation})
    reply = app(Message(content, dst_node_id=5, message_type=MessageType.EVALUATE), context)
    metrics = dict(reply.content["metrics"])
    assert sorted(metrics) == ["eval-accuracy", "eval-loss", "num-examples"]
    assert metrics["num-examples"] == 360  # the held-out split, never the training records


def test_a_server_cannot_point_a_deployed_node_at_other_files_or_loaders(tmp_path):
    from flwr.app import ConfigRecord, Message, MessageType

    from client.client_app import app

    secret = tmp_path / "someone-elses.npz"
    np_values = {"dataset": "custom", "num-classes": 10, "data-path": str(secret)}
    context = Context(
        run_id=1, node_id=5, node_config={"state-dir": str(tmp_path)}, state=RecordDict(),
        run_config=RunConfig.from_mapping(np_values).to_mapping(),
    )
    query = Message(RecordDict({"config": ConfigRecord()}), dst_node_id=5,
                    message_type=MessageType.QUERY)
    reason = _refusal(app(query, context))
    # The run config's data-path is ignored: the node asks for its own, says nothing of
    # whether the server's path exists.
    assert "give node config 'data-path'" in reason and str(secret) not in reason
    loader = {**np_values, "data-path": "simulations.examples.custom_data:digits"}
    context.run_config.update(RunConfig.from_mapping(loader).to_mapping())
    assert "give node config 'data-path'" in _refusal(app(query, context))
