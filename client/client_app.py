"""The Flower ClientApp: translate messages to fedmodel's private local training and back.

Node config (``--node-config`` of a SuperNode, or set by a simulation engine):

``partition-id`` / ``num-partitions``
    Which share of the dataset named in the run config this node holds.
``data-path``
    This node's own data (run-config ``dataset = "custom"``): a file, folder or
    ``package.module:function`` (README, "Use your own data"). It replaces
    ``partition-id`` / ``num-partitions``.
``state-dir``
    A node-local directory where the node keeps its privacy ledger across runs
    (``fedmodel.privacy.ledger_store``): a later run on the same data starts from the
    ε already spent. Without it, ε is cumulative within one run only.

Per-client state that must outlive one message lives in ``context.state``:

``privacy-ledger``
    The client's accountant history (``PrivacyLedger.state_dict()``), so every ε it
    reports is cumulative over all its DP-SGD steps in the run.
``privacy-calibration``
    The noise multiplier computed once from ``target-epsilon`` for the whole run.
"""

from __future__ import annotations

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedmodel.config import RunConfig
from fedmodel.data import data_shape, load_partition
from fedmodel.data.sources import (
    DataDescription,
    DataError,
    SourceData,
    check_fits,
    check_trainable,
    client_source,
)
from fedmodel.models import build_model
from fedmodel.privacy import PrivacyLedger, noise_for_target_epsilon
from fedmodel.privacy.ledger_store import LedgerStore, data_identity, data_key
from fedmodel.records import (
    description_to_record,
    ledger_to_record,
    record_to_federation,
    record_to_ledger,
)
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
    model = _model_for(config, msg, context)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())

    if config.dataset == "custom":
        check_trainable(
            len(dataset),
            batch_size=config.batch_size,
            dp=config.dp,
            delta=config.delta,
            origin=_custom_data(context, config).origin,
        )
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
    # The update leaves the node only after its steps are on the node's disk.
    total = _node_total(ledger, context, config, num_examples=len(dataset), steps=result.steps)
    epsilon = total.epsilon() if config.dp else float("inf")
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
            total.state_dict(), client=client, epsilon=epsilon, **{"noise-multiplier": noise}
        )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this client's local data.

    Custom data with a test split of its own (a Python loader's ``(train, test)``
    pair) is evaluated on that split, otherwise on the client's training data.
    """
    config = RunConfig.from_mapping(context.run_config)
    dataset = _client_dataset(context, config)
    if config.dataset == "custom" and _custom_data(context, config).test is not None:
        dataset = _custom_data(context, config).test.dataset  # type: ignore[union-attr]
    model = _model_for(config, msg, context)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loss, accuracy = evaluate(model, dataset)
    metrics = MetricRecord(
        {"num-examples": len(dataset), "eval-loss": loss, "eval-accuracy": accuracy}
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


@app.query()
def describe_data(msg: Message, context: Context) -> Message:
    """Tell the server what this client's data looks like, checked to be trainable.

    The server asks every node before round 1 (``dataset = "custom"``) and builds the
    model from the replies. Bad data is an expected answer, not a crash: the reply
    carries the error (no traceback in the node's log) and the server reports it.
    """
    config = RunConfig.from_mapping(context.run_config)
    try:
        source = _custom_data(context, config)
        check_trainable(
            len(source.train),
            batch_size=config.batch_size,
            dp=config.dp,
            delta=config.delta,
            origin=source.origin,
        )
    except DataError as error:
        failure = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"DataError: {error}")
        return Message(failure, reply_to=msg)
    record = description_to_record(DataDescription.of(source))
    return Message(content=RecordDict({"data": record}), reply_to=msg)


def client_name(context: Context) -> str:
    """How this client is named in logs and ledger files."""
    if "partition-id" in context.node_config:
        return f"partition-{context.node_config['partition-id']}"
    return f"node-{context.node_id}"


def _client_dataset(context: Context, config: RunConfig):
    if config.dataset == "custom" or "data-path" in context.node_config:
        return _custom_data(context, config).train.dataset
    node = context.node_config
    if "partition-id" not in node or "num-partitions" not in node:
        raise ValueError(
            f"node {context.node_id}: node config needs 'partition-id' and 'num-partitions' "
            f'(got {sorted(node)}); e.g. --node-config "partition-id=0 num-partitions=3"'
        )
    return load_partition(
        config, partition_id=int(node["partition-id"]), num_partitions=int(node["num-partitions"])
    )


def _custom_data(context: Context, config: RunConfig) -> SourceData:
    return client_source(config, node_config=context.node_config)  # cached per process


def _model_for(config: RunConfig, msg: Message, context: Context):
    if config.dataset == "custom":
        # The server agreed on the model input across clients; it comes with the message.
        federation = record_to_federation(msg.content["config"])
        check_fits(_custom_data(context, config), federation)
        input_shape, num_classes = federation.input_shape, federation.num_classes
    else:
        input_shape, num_classes = data_shape(config)
    return build_model(
        config.model,
        input_shape=input_shape,
        num_classes=num_classes,
        hidden_sizes=config.hidden_layer_sizes,
    )


def _load_ledger(context: Context, config: RunConfig) -> PrivacyLedger:
    ledger = PrivacyLedger(accountant=config.accountant, delta=config.delta)
    if LEDGER_STATE_KEY in context.state:
        record = context.state[LEDGER_STATE_KEY]
        source = f"context of {client_name(context)}"
        ledger.load_state_dict(record_to_ledger(record, source=source))
    return ledger


def _node_total(
    ledger: PrivacyLedger, context: Context, config: RunConfig, *, num_examples: int, steps: int
) -> PrivacyLedger:
    """This run's ledger, plus every earlier run's steps on a node with a ``state-dir``.

    The Context keeps only this run's steps and the store keeps each run's steps under
    its run id, so no step is counted twice. A run without DP is stored as steps
    without noise: the data it trained on has no finite guarantee from then on.
    """
    state_dir = context.node_config.get("state-dir")
    if not state_dir:
        return ledger
    store = LedgerStore(str(state_dir))
    identity = data_identity(config, node_config=context.node_config)
    key = data_key(identity)
    if config.dp:
        history = ledger.state_dict()["history"]
    else:
        previous = store.read(key)["runs"].get(str(context.run_id), {"history": []})["history"]
        history = [*previous, [0.0, sample_rate_for(num_examples, config.batch_size), steps]]
    store.record_run(key, run_id=context.run_id, history=history, data=identity)
    total = PrivacyLedger(accountant=config.accountant, delta=config.delta)
    total.load_state_dict(
        {
            "accountant": config.accountant,
            "history": store.prior_history(key, run_id=context.run_id) + history,
        }
    )
    return total


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
