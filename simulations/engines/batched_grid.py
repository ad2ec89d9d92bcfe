"""The batched engine's Grid: a round's train messages trained as one cohort.

The ServerApp and strategy are unchanged: they push a round's train messages together,
and this :class:`~simulations.engines.inprocess.InProcessGrid` hands them to
:func:`fedmodel.training.batched_training.train_cohort` at once instead of calling the
ClientApp once per message. Each node's reply is built as ``client/client_app.py``'s
``train`` builds it, from the same pieces (its node policy and run-config view, its
:class:`~fedmodel.privacy.client_privacy.ClientPrivacy` in the node's Context, whose
``plan_round`` / ``record_round`` calibrate, refuse and keep the ledger; its data,
seed, model and update records), so weights, metrics, ledger records and ε are those
the ClientApp would send. Evaluate and query messages go to the ClientApp as before.

Why not call the ClientApp: it trains one client per call; batching needs every
client's data, seed and plan before the first step, so its ``train`` is split here
into "prepare" (everything up to ``train_locally``) and "reply" (everything after).
``tests/simulations/engines/test_batched_engine.py`` checks the replies stay equal.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict

from client import client_app as client
from fedmodel.config import RunConfig
from fedmodel.data.sources import check_trainable
from fedmodel.privacy.client_privacy import ClientPrivacy, RoundPlan
from fedmodel.privacy.delta import check_delta
from fedmodel.privacy.node_policy import NodePolicy
from fedmodel.records import (
    client_privacy_to_record,
    decode_fast,
    ledger_to_record,
    record_to_state_dict,
)
from fedmodel.training import LocalTrainingResult, TrainingSettings
from fedmodel.training.batched_training import (
    CohortMember,
    has_conv,
    train_cohort,
    unbatchable_reason,
)
from simulations.engines.clientapp import one_torch_thread, torch_threads
from simulations.engines.inprocess import InProcessGrid

TRAIN = "train"  # Flower's MessageType.TRAIN


@dataclass
class _Prepared:
    """One node's round up to training: what the ClientApp holds when it calls train_locally."""

    message: Message
    context: Context
    config: RunConfig
    policy: NodePolicy
    privacy: ClientPrivacy
    plan: RoundPlan
    member: CohortMember
    steps_before: int


class BatchedGrid(InProcessGrid):
    """An :class:`InProcessGrid` that trains each push's train messages as one cohort.

    Takes the same parameters. Run-config ``batched-memory-mb`` chunks the cohort,
    ``batched-compile`` compiles its step; ``device`` is where it trains. If the cohort
    trainer fails (a model ``torch.func`` cannot run), the message says why once and
    the rest of the run trains through the ClientApp.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fallback_reason: str | None = None
        self._threads = torch.get_num_threads()
        self._shared = _Shared()  # kept across rounds: run config and data do not change
        self.compile_s = 0.0  # the one-off torch.compile time, reported once
        self.cohorts = 0

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        trains = [
            m
            for m in messages
            if m.metadata.message_type == TRAIN and m.metadata.dst_node_id in self._node_configs
        ]
        if not trains or self.fallback_reason is not None:
            return super().push_messages(messages)
        nodes = [m.metadata.dst_node_id for m in trains]
        if len(set(nodes)) != len(nodes):  # a node's messages must run in turn
            return super().push_messages(messages)
        batched = {id(m) for m in trains}
        others = [m for m in messages if id(m) not in batched]
        ids = {id(m): mid for m, mid in zip(others, super().push_messages(others), strict=True)}
        for message in trains:  # stamped first: a reply records the id it replies to
            message.metadata.__dict__["_message_id"] = str(uuid4())
            message.metadata.__dict__["_run_id"] = self._run.run_id
        self._threads = torch.get_num_threads()  # the process's: a conv cohort's step uses them
        with one_torch_thread():  # preparing and replying: small copies, as the ClientApp
            replies = self._train(trains)
        if replies is None:  # fell back: the ClientApp trains them
            ids.update(zip(map(id, trains), super().push_messages(trains), strict=True))
        else:
            ids.update(zip(map(id, trains), self._keep(trains, replies), strict=True))
        return [ids[id(m)] for m in messages]

    def _keep(self, messages: list[Message], replies: list[Message]) -> list[str]:
        """Stamp and store the replies as :meth:`InProcessGrid.push_messages` does."""
        out = []
        for message, reply in zip(messages, replies, strict=True):
            if not reply.has_error():  # in this process only: Flower's FedAvg decodes faster
                decode_fast(reply.content)
            reply.metadata.__dict__["_message_id"] = str(uuid4())
            self._replies[message.metadata.message_id] = reply
            out.append(message.metadata.message_id)
        return out

    def _train(self, messages: list[Message]) -> list[Message] | None:
        """One reply per message, or None to fall back (nothing changed in any Context)."""
        replies: dict[int, Message] = {}
        prepared: list[_Prepared] = []
        shared = self._shared
        shared.next_push()
        for message in messages:
            context = self.context(message.metadata.dst_node_id)
            outcome: list[_Prepared] = []

            def prepare(msg: Message, ctx: Context, outcome: list[_Prepared] = outcome) -> None:
                outcome.append(_prepare(msg, ctx, shared))

            error = client._replies_with_errors(prepare)(message, context)  # type: ignore[arg-type]
            if error is not None:  # refused or failed as the ClientApp would: its reply
                replies[id(message)] = error
            else:
                prepared.extend(outcome)
        if prepared:
            results = self._cohort(prepared)
            if results is None:
                return None
            for item, result in zip(prepared, results, strict=True):

                def reply(msg: Message, ctx: Context, item=item, result=result) -> Message:
                    return _reply(item, result)

                replies[id(item.message)] = client._replies_with_errors(reply)(
                    item.message, item.context
                )
        return [replies[id(m)] for m in messages]

    def _cohort(self, prepared: list[_Prepared]) -> list[LocalTrainingResult] | None:
        config = prepared[0].config
        try:
            model = _template(prepared[0])
            reason = unbatchable_reason(model)
            if reason is not None:
                self._fall_back(f"model {config.model!r}: {reason}")
                return None
            # A conv cohort's step is large enough for intra-op threads (MNIST CNN, 10
            # clients at B = 10: 1.46x faster with 2 threads than 1; B = 60: 1.65x); an
            # MLP's is not (K = 100: 1.4x slower), and one thread keeps it as it was.
            threads = self._threads if has_conv(model) else 1
            with torch_threads(threads):
                results, timing = train_cohort(
                    model,
                    [item.member for item in prepared],
                    settings=_settings(config, noise_multiplier=0.0),
                    device=_device(config),
                    memory_mb=float(getattr(config, "batched_memory_mb", 0.0)),
                    compiled=bool(getattr(config, "batched_compile", False)),
                )
        except Exception as error:  # noqa: BLE001 - e.g. a model torch.func cannot run
            # No ledger or Context was changed: the ClientApp trains this cohort afresh.
            self._fall_back(f"the cohort trainer failed ({type(error).__name__}: {error})")
            return None
        if timing.compile_s and not self.compile_s:
            self.compile_s = timing.compile_s
            print(f"batched engine: torch.compile took {timing.compile_s:.1f} s (once)", flush=True)
        self.cohorts += 1
        return results

    def _fall_back(self, reason: str) -> None:
        self.fallback_reason = reason
        print(f"batched engine: {reason}; training through the ClientApp instead", flush=True)


class _Shared:
    """What a run's messages share, converted once: the run config, each node's training
    data (both fixed for the run), a push's global weights.

    The strategy sends every node the same run config and the same ArrayRecord; parsing
    and converting them per client was most of a small cohort's preparation time, and
    copying a node's share of the data out again every round ~0.2-0.6 ms a client. Only
    the last push's nodes' data is kept (no more than the cohort trainer holds anyway):
    a federation's clients need not fit in memory together.
    """

    def __init__(self) -> None:
        self.configs: dict[tuple[Any, ...], RunConfig] = {}
        self.sorted_configs: dict[int, tuple[Any, tuple[Any, ...]]] = {}  # see config_key
        self.weights: dict[int, tuple[Any, dict[str, Any]]] = {}
        self.datasets: dict[tuple[int, int], Any] = {}
        self._previous: dict[tuple[int, int], Any] = {}

    def next_push(self) -> None:
        self.weights.clear()
        self._previous, self.datasets = self.datasets, {}

    def dataset(self, context: Context, config: RunConfig) -> Any:
        """The node's training data, as the ClientApp loads it (once per node and config)."""
        key = (context.node_id, id(self.configs.get(self.config_key(context))))
        if key not in self.datasets:
            found = self._previous.get(key)
            self.datasets[key] = (
                found if found is not None else client._client_dataset(context, config)
            )
        return self.datasets[key]

    def run_config(self, context: Context) -> RunConfig:
        key = self.config_key(context)
        if key not in self.configs:
            self.configs[key] = _run_config(context)
        return self.configs[key]

    def config_key(self, context: Context) -> tuple[Any, ...]:
        """The node's run config and device, sorted once per run-config object (~80 keys)."""
        run_config = context.run_config
        kept = self.sorted_configs.get(id(run_config))
        if kept is None or kept[0] is not run_config:
            kept = (run_config, tuple(sorted(run_config.items())))
            self.sorted_configs[id(run_config)] = kept
        return (kept[1], context.node_config.get("device"))

    def initial_state(self, msg: Message) -> dict[str, Any]:
        arrays = msg.content["arrays"]
        if id(arrays) not in self.weights:  # the record is kept too, so its id stays its own
            self.weights[id(arrays)] = (arrays, record_to_state_dict(arrays))
        return self.weights[id(arrays)][1]


def _prepare(msg: Message, context: Context, shared: _Shared) -> _Prepared:
    """``client_app.train`` up to its ``train_locally`` call, the same checks in order."""
    policy = NodePolicy.from_node_config(context.node_config)
    config = client._node_view(shared.run_config(context), policy, context)
    privacy = client._client_privacy(context, config, policy)
    server_round = int(msg.content["config"]["server-round"])
    dataset = shared.dataset(context, config)
    if client._own_data(config):
        check_trainable(
            len(dataset),
            batch_size=config.batch_size,
            dp=config.dp,
            delta=config.delta,
            origin=client._custom_data(context, config).origin,
        )
        client._model_for(config, msg, context)  # checks the data fits the agreed model
    if config.dp:
        check_delta(
            config.delta, num_examples=len(dataset), where=f"client {client.client_name(context)}"
        )
    plan = privacy.plan_round(num_examples=len(dataset), server_round=server_round)
    member = CohortMember(
        dataset=dataset,
        initial_state=shared.initial_state(msg),  # read only: the trainer stacks copies
        seed=client._training_seed(config.seed, server_round, context),
        noise_multiplier=plan.noise_multiplier,
        ledger=privacy.ledger if config.dp else None,
    )
    return _Prepared(
        message=msg,
        context=context,
        config=config,
        policy=policy,
        privacy=privacy,
        plan=plan,
        member=member,
        steps_before=privacy.ledger.steps,
    )


def _reply(item: _Prepared, result: LocalTrainingResult) -> Message:
    """``client_app.train`` after its ``train_locally`` call: ledger first, then the reply."""
    config, privacy, plan, msg = item.config, item.privacy, item.plan, item.message
    context, policy = item.context, item.policy
    if not config.dp:
        privacy.record_without_dp(plan)
        records = client._update_records(config, policy, msg, result.state_dict, context)
        context.state[client.PRIVACY_STATE_KEY] = client_privacy_to_record(privacy.state_dict())
        metrics = {
            "num-examples": result.num_examples,
            "train-loss": result.mean_loss,
            "steps": result.steps,
        }
        return Message(
            content=RecordDict({**records, "metrics": MetricRecord(metrics)}), reply_to=msg
        )
    total = privacy.record_round(plan, steps_before=item.steps_before)
    context.state[client.PRIVACY_STATE_KEY] = client_privacy_to_record(privacy.state_dict())
    records = client._update_records(config, policy, msg, result.state_dict, context)
    # Under DP only public quantities (as the ClientApp): no loss, num-examples ceil(N/B) B.
    metrics = {"num-examples": plan.steps // config.local_epochs * config.batch_size}
    metrics["steps"] = result.steps
    privacy_record = ledger_to_record(
        total.state_dict(),
        client=client.client_name(context),
        epsilon=total.epsilon(),
        **{"noise-multiplier": plan.noise_multiplier, "noise-source": policy.noise_source},
    )
    content = RecordDict({**records, "metrics": MetricRecord(metrics), "privacy": privacy_record})
    return Message(content=content, reply_to=msg)


def _run_config(context: Context) -> RunConfig:
    """The node's run config as the ClientApp reads it (its own ``device`` wins, if set)."""
    read = getattr(client, "_run_config", None)
    return read(context) if read is not None else RunConfig.from_mapping(context.run_config)


def _template(item: _Prepared) -> Any:
    """The round's model, built as the ClientApp builds it, holding the received weights."""
    model = client._model_for(item.config, item.message, item.context)
    model.load_state_dict(item.member.initial_state)
    return model


def _settings(config: RunConfig, *, noise_multiplier: float) -> TrainingSettings:
    """The ClientApp's TrainingSettings (sigma is each member's own in a cohort)."""
    return TrainingSettings(
        epochs=config.local_epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        momentum=config.momentum,
        dp=config.dp,
        noise_multiplier=noise_multiplier,
        max_grad_norm=config.max_grad_norm,
        grad_sample_mode=config.grad_sample_mode,
        proximal_mu=config.proximal_mu,
    )


def _device(config: RunConfig) -> Any:
    """Run-config ``device`` as the ClientApp resolves it (the CPU before that key existed)."""
    spec = getattr(config, "device", "cpu")
    try:
        from fedmodel.training.device import resolve_device
    except ImportError:  # pragma: no cover - before the device module landed
        return None
    return resolve_device(spec)


__all__ = ["BatchedGrid"]
