"""The Flower ClientApp: translate messages to fedmodel's private local training and back.

Node config (``--node-config`` of a SuperNode, or set by a simulation engine):

``partition-id`` / ``num-partitions``
    Which share of the built-in dataset named in the run config this node holds.

Per-client state that must outlive one message lives in ``context.state``:

``privacy-ledger``
    The client's accountant history (``PrivacyLedger.state_dict()``), so every ε it
    reports is cumulative over all its DP-SGD steps in the run.
``privacy-calibration``
    The noise multiplier computed once from ``target-epsilon`` for the whole run.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedmodel.config import RunConfig
from fedmodel.data import load_dataset, load_partition
from fedmodel.models import build_model
from fedmodel.privacy import PrivacyLedger, noise_for_target_epsilon
from fedmodel.records import ledger_to_record, record_to_ledger
from fedmodel.training import TrainingSettings, evaluate, sample_rate_for, train_locally

LEDGER_STATE_KEY = "privacy-ledger"
CALIBRATION_STATE_KEY = "privacy-calibration"

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on this client's data; reply with the update."""
    config = RunConfig.from_mapping(context.run_config)
    dataset = _client_dataset(context, config)
    client = client_name(context)
    server_round = int(msg.content["config"]["server-round"])
    model = _model_for(config)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())

    ledger = _load_ledger(context, config)
    noise = _noise_multiplier(context, config, num_examples=len(dataset))
    if config.dp and config.delta >= 1.0 / len(dataset):
        raise ValueError(
            f"client {client}: delta {config.delta:g} is not below 1/{len(dataset)} "
            f"(1 / its number of records); such a delta permits leaking a whole record. "
            f"Lower run-config key 'delta'."
        )
    result = train_locally(
        model,
        dataset,
        settings=TrainingSettings(
            epochs=config.local_epochs,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            momentum=config.momentum,
            dp=config.dp,
            noise_multiplier=noise,
            max_grad_norm=config.max_grad_norm,
            grad_sample_mode=config.grad_sample_mode,
        ),
        ledger=ledger if config.dp else None,
        seed=_training_seed(config.seed, server_round, context),
    )
    epsilon = ledger.epsilon() if config.dp else float("inf")
    content = RecordDict(
        {
            "arrays": ArrayRecord(result.state_dict),
            "metrics": MetricRecord(
                {
                    "num-examples": result.num_examples,
                    "train-loss": result.mean_loss,
                    "steps": result.steps,
                }
            ),
        }
    )
    if config.dp:
        state = ledger.state_dict()
        context.state[LEDGER_STATE_KEY] = ledger_to_record(state)
        content["privacy"] = ledger_to_record(
            state, client=client, epsilon=epsilon, **{"noise-multiplier": noise}
        )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this client's local data."""
    config = RunConfig.from_mapping(context.run_config)
    dataset = _client_dataset(context, config)
    model = _model_for(config)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loss, accuracy = evaluate(model, dataset)
    metrics = MetricRecord(
        {"num-examples": len(dataset), "eval-loss": loss, "eval-accuracy": accuracy}
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


def client_name(context: Context) -> str:
    """How this client is named in logs and ledger files."""
    if "partition-id" in context.node_config:
        return f"partition-{context.node_config['partition-id']}"
    return f"node-{context.node_id}"


def _client_dataset(context: Context, config: RunConfig):
    node = context.node_config
    if "partition-id" not in node or "num-partitions" not in node:
        raise ValueError(
            f"node {context.node_id}: node config needs 'partition-id' and 'num-partitions' "
            f"(got {sorted(node)}); e.g. --node-config \"partition-id=0 num-partitions=3\""
        )
    return load_partition(
        config, partition_id=int(node["partition-id"]), num_partitions=int(node["num-partitions"])
    )


def _model_for(config: RunConfig):
    splits = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed)
    return build_model(
        config.model,
        input_shape=splits.input_shape,
        num_classes=splits.num_classes,
        hidden_sizes=config.hidden_layer_sizes,
    )


def _load_ledger(context: Context, config: RunConfig) -> PrivacyLedger:
    ledger = PrivacyLedger(accountant=config.accountant, delta=config.delta)
    if LEDGER_STATE_KEY in context.state:
        record = context.state[LEDGER_STATE_KEY]
        source = f"context of {client_name(context)}"
        ledger.load_state_dict(record_to_ledger(record, source=source))
    return ledger


def _noise_multiplier(context: Context, config: RunConfig, *, num_examples: int) -> float:
    """The run's noise multiplier for this client, fixed at its first round."""
    if not config.dp or config.target_epsilon == 0:
        return config.noise_multiplier
    if CALIBRATION_STATE_KEY in context.state:
        return float(context.state[CALIBRATION_STATE_KEY]["noise-multiplier"])
    sample_rate = sample_rate_for(num_examples, config.batch_size)
    steps_per_epoch = round(1 / sample_rate)
    # Plan for taking part in every round: with client sampling the spend is lower.
    planned = config.num_server_rounds * config.local_epochs * steps_per_epoch
    noise = noise_for_target_epsilon(
        target_epsilon=config.target_epsilon,
        delta=config.delta,
        sample_rate=sample_rate,
        steps=planned,
        accountant=config.accountant,
    )
    context.state[CALIBRATION_STATE_KEY] = ConfigRecord(
        {"noise-multiplier": noise, "planned-steps": planned, "sample-rate": sample_rate}
    )
    return noise


def _training_seed(seed: int, server_round: int, context: Context) -> int:
    """Distinct, reproducible randomness per (run seed, round, client)."""
    key = int(context.node_config.get("partition-id", context.node_id))
    return int(np.random.SeedSequence([seed, server_round, key]).generate_state(1)[0])
