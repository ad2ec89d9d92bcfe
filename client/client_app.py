"""The Flower ClientApp: translate messages to fedmodel's private local training and back.

Node config (``--node-config`` of a SuperNode, or set by a simulation engine) belongs
to the node's operator; the server cannot change it. Besides the node's privacy policy
(``fedmodel.privacy.node_policy``: ``noise-source``, ``require-dp``,
``min-noise-multiplier``, ``max-epsilon``, ``allowed-accountants``, ``state-dir``,
``data-id``, ``simulated``):

``partition-id`` / ``num-partitions``
    Which share of a built-in dataset this node holds.
``data-dir``
    Where this node finds a built-in dataset's files (``mnist.npz``, ...).
``data-path``
    This node's own data (run-config ``dataset = "custom"``): a file, folder or
    ``package.module:function`` (README, "Use your own data").
``device``
    Where this node trains and evaluates (``auto``, ``cpu``, ``cuda``, ``cuda:N``):
    the GPU belongs to the node, so its own ``device`` wins over the run config's
    (README, "GPU").

A deployed (not simulated) node reads data locations from its node config only: the
run config's ``data-dir`` / ``data-path`` are the server's and are ignored here, so a
server cannot point a node at other files or loaders.

Per-client state that must outlive one message lives in ``context.state`` under
``client-privacy``: the :class:`~fedmodel.privacy.client_privacy.ClientPrivacy` state
(this run's ledger, the calibrated noise). The node's ledger file in ``state-dir`` is
the record that survives restarts.

What leaves the node under DP is listed in the README ("What a client sends"): the
update, the ledger (σ, q, steps: public parameters of the mechanism), ε, and counts
that the ledger already implies; no loss or accuracy on training records. Error
replies carry value-free texts only; the full text goes to the node's log.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from client.secure_aggregation import secure_aggregation_mod
from fedmodel.compression import compress
from fedmodel.config import ConfigError, RunConfig
from fedmodel.data import DATASETS, data_shape, load_partition
from fedmodel.data.sources import (
    NODE_DATA_KEY,
    DataDescription,
    DataError,
    SourceData,
    check_fits,
    check_trainable,
    client_source,
)
from fedmodel.models import build_model, model_settings
from fedmodel.models.factory import is_factory_path
from fedmodel.privacy.client_privacy import ClientPrivacy, PrivacyRequest
from fedmodel.privacy.delta import check_delta
from fedmodel.privacy.ledger_store import LedgerError, data_identity
from fedmodel.privacy.node_policy import NodePolicy, PolicyRefusal
from fedmodel.privacy.secure_randomness import SecureRandomness
from fedmodel.records import (
    client_privacy_to_record,
    compressed_to_records,
    description_to_record,
    ledger_to_record,
    record_to_client_privacy,
    record_to_federation,
    record_to_state_dict,
    state_dict_to_record,
)
from fedmodel.training import TrainingSettings, evaluate, train_locally
from fedmodel.training.device import resolve_device

PRIVACY_STATE_KEY = "client-privacy"
# Errors whose text names places and kinds of problems only, never a data value.
_VALUE_FREE_ERRORS = (ConfigError, PolicyRefusal, LedgerError, FileNotFoundError)
logger = logging.getLogger("fedmodel.client")

app = ClientApp()


def _replies_with_errors(handler: Callable[[Message, Context], Message]):
    """Turn an exception into an error reply the server may read: no data values in it.

    Refusals, config and file errors name keys, places and kinds of problems and are
    sent as they are; a ``DataError`` sends its value-free ``public`` text; anything
    else sends only its type. The full text always goes to this node's log.
    """

    @functools.wraps(handler)
    def wrapped(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except Exception as error:  # noqa: BLE001 - every failure becomes a reply
            logger.warning("%s: %s: %s", client_name(context), type(error).__name__, error)
            if isinstance(error, DataError):
                text = error.public
            elif isinstance(error, _VALUE_FREE_ERRORS):
                text = str(error)
            else:
                text = "the ClientApp failed (details in the node's log)"
            reason = f"{type(error).__name__}: {text}"
            failure = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason)
            return Message(failure, reply_to=msg)

    return wrapped


@app.train(mods=[secure_aggregation_mod])  # SecAgg+ (client/secure_aggregation.py)
@_replies_with_errors
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on this client's data; reply with the update."""
    policy = NodePolicy.from_node_config(context.node_config)
    config = _node_view(_run_config(context), policy, context)
    privacy = _client_privacy(context, config, policy)
    server_round = int(msg.content["config"]["server-round"])
    dataset = _client_dataset(context, config)
    if _own_data(config):
        check_trainable(
            len(dataset),
            batch_size=config.batch_size,
            dp=config.dp,
            delta=config.delta,
            origin=_custom_data(context, config).origin,
        )
    if config.dp:
        check_delta(config.delta, num_examples=len(dataset), where=f"client {client_name(context)}")
    # Refused here, before any record is read for training, when the policy says no.
    plan = privacy.plan_round(num_examples=len(dataset), server_round=server_round)
    model = _model_for(config, msg, context)
    model.load_state_dict(record_to_state_dict(msg.content["arrays"]))
    steps_before = privacy.ledger.steps
    result = train_locally(
        model,
        dataset,
        settings=TrainingSettings(
            epochs=config.local_epochs,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            momentum=config.momentum,
            dp=config.dp,
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=config.max_grad_norm,
            grad_sample_mode=config.grad_sample_mode,
            proximal_mu=config.proximal_mu,
            augmentation=config.augmentation,
            augmentation_multiplicity=config.augmentation_multiplicity,
            mixup_alpha=config.mixup_alpha,
        ),
        ledger=privacy.ledger if config.dp else None,
        seed=_training_seed(config.seed, server_round, context),
        noise_source=policy.noise_source,
        device=resolve_device(config.device),
    )
    # The update leaves the node only after its steps are in the node's ledger.
    if not config.dp:
        privacy.record_without_dp(plan)
        context.state[PRIVACY_STATE_KEY] = client_privacy_to_record(privacy.state_dict())
        metrics = {
            "num-examples": result.num_examples,
            "train-loss": result.mean_loss,
            "steps": result.steps,
        }
        return Message(
            content=RecordDict(
                {
                    **_update_records(config, policy, msg, result.state_dict, context),
                    "metrics": MetricRecord(metrics),
                }
            ),
            reply_to=msg,
        )
    total = privacy.record_round(plan, steps_before=steps_before)
    context.state[PRIVACY_STATE_KEY] = client_privacy_to_record(privacy.state_dict())
    # Under DP only public quantities: the weight is ceil(N / B) * B, implied by the
    # ledger's q and steps; the exact N and the training loss are not sent.
    metrics = {"num-examples": plan.steps // config.local_epochs * config.batch_size}
    metrics["steps"] = result.steps
    privacy_record = ledger_to_record(
        total.state_dict(),
        client=client_name(context),
        epsilon=total.epsilon(),
        **{"noise-multiplier": plan.noise_multiplier, "noise-source": policy.noise_source},
    )
    content = RecordDict(
        {
            **_update_records(config, policy, msg, result.state_dict, context),
            "metrics": MetricRecord(metrics),
            "privacy": privacy_record,
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate(mods=[secure_aggregation_mod])
@_replies_with_errors
def evaluate_global(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this client's local data.

    Custom data with a test split of its own (a Python loader's ``(train, test)``
    pair) is evaluated on that split. Without one, the training records are used only
    without DP: under DP their loss and accuracy would be noise-free statistics of the
    records the guarantee protects, so the node refuses.
    """
    policy = NodePolicy.from_node_config(context.node_config)
    config = _node_view(_run_config(context), policy, context)
    held_out = None
    if _own_data(config) and _custom_data(context, config).test is not None:
        held_out = _custom_data(context, config).test.dataset  # type: ignore[union-attr]
    if held_out is None and config.dp:
        raise PolicyRefusal(
            "under DP this node evaluates only on a held-out split, and it has none "
            "(its loader gives no (train, test) pair); use a central test set "
            "(run-config test-data) instead"
        )
    dataset = held_out if held_out is not None else _client_dataset(context, config)
    model = _model_for(config, msg, context)
    model.load_state_dict(record_to_state_dict(msg.content["arrays"]))
    loss, accuracy = evaluate(model, dataset, device=resolve_device(config.device))
    metrics = MetricRecord(
        {"num-examples": len(dataset), "eval-loss": loss, "eval-accuracy": accuracy}
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


@app.query()
@_replies_with_errors
def describe_data(msg: Message, context: Context) -> Message:
    """Tell the server what this client's data looks like, checked to be trainable.

    The server asks every node before round 1 (``dataset = "custom"``) and builds the
    model from the replies. Bad data is an expected answer, not a crash: the reply
    carries the error's value-free text and the server reports it. Under DP the
    description holds only what is public anyway: the input shape, the configured
    class count, the size bound ``ceil(N / B) * B``, and whether a held-out split
    exists; no class names or counts read from the records.
    """
    policy = NodePolicy.from_node_config(context.node_config)
    config = _node_view(_run_config(context), policy, context)
    source = _custom_data(context, config)
    check_trainable(
        len(source.train),
        batch_size=config.batch_size,
        dp=config.dp,
        delta=config.delta,
        origin=source.origin,
    )
    description = DataDescription.of(source)
    if config.dp:
        size_bound = -(-len(source.train) // config.batch_size) * config.batch_size
        description = DataDescription(
            input_shape=description.input_shape,
            num_classes=config.num_classes,
            num_examples=size_bound,
            origin=description.origin,
        )
    record = description_to_record(description)
    record["has-held-out-split"] = source.test is not None
    return Message(content=RecordDict({"data": record}), reply_to=msg)


def client_name(context: Context) -> str:
    """How this client is named in logs and ledger files."""
    if "partition-id" in context.node_config:
        return f"partition-{context.node_config['partition-id']}"
    return f"node-{context.node_id}"


def _run_config(context: Context) -> RunConfig:
    """The run config with this node's own ``device`` (node config), if set, over the server's.

    Applied before validation: a node whose operator chose ``cpu`` runs a job whose run
    config says ``cuda``, and a node without CUDA that did not choose refuses it.
    """
    values = dict(context.run_config)
    if "device" in context.node_config:
        device = str(context.node_config["device"])
        try:
            resolve_device(device)
        except ValueError as error:
            raise ConfigError(f"node-config key 'device': {error}") from None
        values["device"] = device
    try:
        return _parsed_run_config(tuple(values.items()))
    except TypeError:  # an unhashable value: parsed (and refused) without the cache
        return RunConfig.from_mapping(values)


@functools.lru_cache(maxsize=32)
def _parsed_run_config(items: tuple[tuple[str, object], ...]) -> RunConfig:
    """``RunConfig.from_mapping``, once per distinct run config (RunConfig is frozen).

    Every node of a simulation gets the same run config every round; validating it
    cost ~0.7 ms a call, a quarter of a digits client's training. A refused config
    raises each time (exceptions are not cached).
    """
    return RunConfig.from_mapping(dict(items))


def _node_view(config: RunConfig, policy: NodePolicy, context: Context) -> RunConfig:
    """The run config as this node applies it: a deployed node's data locations are its own.

    The node config's ``data-dir`` wins; a simulated node may also use the run config's.
    """
    own_dir = str(context.node_config.get("data-dir", ""))
    if policy.simulated:
        return config.replace(data_dir=own_dir) if own_dir else config
    return config.replace(data_dir=own_dir, data_path="", test_data="")


def _client_privacy(context: Context, config: RunConfig, policy: NodePolicy) -> ClientPrivacy:
    if _own_data(config) or NODE_DATA_KEY in context.node_config:
        data_path = str(context.node_config.get(NODE_DATA_KEY, config.data_path))
    else:
        data_path = ""
    node_config = dict(context.node_config)
    if config.data_dir:  # the node's view: its own data-dir, or a simulation's
        node_config["data-dir"] = config.data_dir
    privacy = ClientPrivacy(
        policy=policy,
        request=PrivacyRequest(
            dp=config.dp,
            noise_multiplier=config.noise_multiplier,
            target_epsilon=config.target_epsilon,
            delta=config.delta,
            accountant=config.accountant,
            num_server_rounds=config.num_server_rounds,
            local_epochs=config.local_epochs,
            batch_size=config.batch_size,
        ),
        run_id=context.run_id,
        data=data_identity(node_config, dataset=config.dataset, data_path=data_path),
    )
    if PRIVACY_STATE_KEY in context.state:
        state = record_to_client_privacy(
            context.state[PRIVACY_STATE_KEY], source=f"context of {client_name(context)}"
        )
        privacy.load_state_dict(state)
    return privacy


def _client_dataset(context: Context, config: RunConfig):
    if _own_data(config) or NODE_DATA_KEY in context.node_config:
        return _custom_data(context, config).train.dataset
    node = context.node_config
    if "partition-id" not in node or "num-partitions" not in node:
        raise ConfigError(
            f"node {context.node_id}: node config needs 'partition-id' and 'num-partitions' "
            f'(got {sorted(node)}); e.g. --node-config "partition-id=0 num-partitions=3"'
        )
    partition_id, num_partitions = int(node["partition-id"]), int(node["num-partitions"])
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(
            f"partition-id {partition_id} is out of range for {num_partitions} partitions"
        )
    return _partition(config, partition_id, num_partitions)


@functools.lru_cache(maxsize=32)
def _partition(config: RunConfig, partition_id: int, num_partitions: int):
    """``load_partition``, once per node view of the run config (RunConfig is frozen).

    A node trains on the same share every round; copying it out of the dataset again
    cost ~0.1-0.15 ms a message, ~4% of a digits client's round. Training reads it only.
    """
    return load_partition(config, partition_id=partition_id, num_partitions=num_partitions)


def _own_data(config: RunConfig) -> bool:
    """The clients bring their own data (``dataset = "custom"``)."""
    return DATASETS.get(config.dataset).own_data


def _custom_data(context: Context, config: RunConfig) -> SourceData:
    return client_source(config, node_config=context.node_config)  # cached per process


def _model_for(config: RunConfig, msg: Message, context: Context):
    """The round's model, to load the received weights into (every parameter and buffer).

    A built-in model is built once per thread and shape, then reused: building the
    digits MLP (initial weights drawn only to be overwritten, Opacus's validation) cost
    ~0.3-0.4 ms, every client, every round. Training leaves nothing else behind
    (``train_locally`` unhooks Opacus; the optimizer and momentum are new each call), as
    the bare loop of ``simulations/benchmarks/overhead.py`` relies on too. A user's own
    model (``package.module:factory``) is built afresh each time: it may keep state of
    its own.
    """
    if _own_data(config):
        # The server agreed on the model input across clients; it comes with the message.
        federation = record_to_federation(msg.content["config"])
        check_fits(_custom_data(context, config), federation)
        input_shape, num_classes = federation.input_shape, federation.num_classes
    else:
        input_shape, num_classes = data_shape(config)
    settings = model_settings(config)
    if is_factory_path(config.model):
        return build_model(
            config.model, input_shape=input_shape, num_classes=num_classes, settings=settings
        )
    # What else a fresh build would depend on: torch's default dtype and device.
    key = (
        threading.get_ident(),
        config.model,
        tuple(input_shape),
        num_classes,
        settings,
        torch.get_default_dtype(),
        torch.get_default_device(),
    )
    model = _BUILT_MODELS.get(key)
    if model is None:
        if len(_BUILT_MODELS) >= _MAX_BUILT_MODELS:
            _BUILT_MODELS.clear()
        model = build_model(
            config.model, input_shape=input_shape, num_classes=num_classes, settings=settings
        )
        _BUILT_MODELS[key] = model
    return model.train()  # as built: evaluating the last one left it in eval mode


_BUILT_MODELS: dict[tuple[object, ...], torch.nn.Module] = {}  # see _model_for
_MAX_BUILT_MODELS = 8


def _update_records(
    config: RunConfig,
    policy: NodePolicy,
    msg: Message,
    weights: dict[str, torch.Tensor],
    context: Context,
) -> dict[str, ArrayRecord | ConfigRecord]:
    """The trained model as the reply carries it: weights, or a compressed update.

    With ``update-compression`` the update (weights minus the global weights received)
    is compressed (``fedmodel.compression``). Under DP that is post-processing of a
    private update: the guarantee is unchanged. The stochastic rounding of ``int8`` draws
    from ``SecureRandomness`` under ``noise-source = "secure"``, else from a generator
    seeded per (run seed, round, client), so simulations stay reproducible.
    """
    if config.update_compression == "none":
        return {"arrays": state_dict_to_record(weights)}  # ArrayRecord(weights), cheaper
    sent = msg.content["arrays"].to_torch_state_dict()
    update = {name: value - sent[name] for name, value in weights.items()}
    if policy.noise_source == "secure":
        generator: torch.Generator | SecureRandomness = SecureRandomness()
    else:
        server_round = int(msg.content["config"]["server-round"])
        seed = _training_seed(config.seed + 1, server_round, context)
        generator = torch.Generator().manual_seed(seed)
    compressed = compress(
        update,
        method=config.update_compression,
        fraction=config.topk_fraction,
        generator=generator,
    )
    return compressed_to_records(compressed)


def _training_seed(seed: int, server_round: int, context: Context) -> int:
    """Distinct, reproducible randomness per (run seed, round, client).

    Under ``noise-source = "secure"`` it orders nothing that DP relies on.
    """
    key = int(context.node_config.get("partition-id", context.node_id))
    return int(np.random.SeedSequence([seed, server_round, key]).generate_state(1)[0])
