"""SecAgg+ on the client: Flower's ``secaggplus_mod`` around the ClientApp's own handlers.

Secure aggregation (SecAgg+, Bell et al. 2020, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS) runs in Flower 1.42 on the legacy workflow only
(``SecAggPlusWorkflow`` inside ``DefaultWorkflow``, :mod:`server.secure_aggregation`):
its four stages arrive as train messages, and in the third one Flower's
``secaggplus_mod`` calls the train handler with a legacy ``FitIns`` record and masks
what it returns. :func:`secure_aggregation_mod` puts that mod in front of the
ClientApp's Message-API handlers and translates between the two forms with Flower's
``flwr.compat`` helpers, so the handlers still run unchanged: the node policy, the
DP-SGD training and the ledger entry happen exactly as without secure aggregation.
No cryptography is written here: key agreement, secret sharing, masking and
quantization are all Flower's.

What leaves the node under SecAgg+: the masked (quantized, ``[w, w * weights]``)
vector, the weight ``w`` in the clear as in the legacy FitRes (under DP it is
``ceil(N / B) * B``, public anyway), and beside them the same privacy ledger record as
without secure aggregation (public parameters of the mechanism), which the server
checks before the masks are removed. Under user-level DP (``privacy-unit`` user or
both) the update is first clipped to the server's clipping norm by Flower's
``fixedclipping_mod`` and sent with weight 1 (README, "Secure aggregation").
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

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
from flwr.app.message_type import MessageType
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.common import (
    Code,
    EvaluateRes,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
)
from flwr.compat.common import recorddict_compat as compat

from fedmodel.privacy.node_policy import PolicyRefusal

# Sent by the server in the fit / evaluate config: the legacy Parameters carry arrays by
# position only, the handlers load them by name.
ARRAY_NAMES_KEY = "array-names"
FITINS_PARAMETERS, FITINS_CONFIG = "fitins.parameters", "fitins.config"
EVALUATEINS_PARAMETERS, EVALUATEINS_CONFIG = "evaluateins.parameters", "evaluateins.config"

Handler = Callable[[Message, Context], Message]
logger = logging.getLogger("fedmodel.client")


class _HandlerError(Exception):
    """The handler replied with an error: carried out of Flower's mod, sent as it is."""

    def __init__(self, reply: Message) -> None:
        super().__init__(reply.error.reason)
        self.reply = reply


def secure_aggregation_mod(msg: Message, context: Context, call_next: Handler) -> Message:
    """A Flower mod: SecAgg+ messages through ``secaggplus_mod``, the others unchanged.

    A train message of the SecAgg+ protocol (it carries Flower's ``secaggplus``
    ConfigRecord) goes to Flower's ``secaggplus_mod``; its masked-vector stage calls the
    handler with the legacy ``FitIns`` translated to this app's train message. A
    legacy evaluate message (the workflow's client evaluation) is translated the same
    way. Under run-config ``secure-aggregation = true`` a plain train message is
    refused: it would send the update unmasked. An error reply of the handler (a
    refusal, a failure) is sent as it is, and no masked vector leaves the node.
    """
    content = msg.content if msg.has_content() else RecordDict()
    if msg.metadata.message_type == MessageType.EVALUATE and EVALUATEINS_PARAMETERS in content:
        return _legacy_evaluate(msg, context, call_next)
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    secure = RECORD_KEY_CONFIGS in content.config_records
    # The raw key, not RunConfig: a bad run config is the handler's to report, as ever.
    if not secure and context.run_config.get("secure-aggregation") is not True:
        return call_next(msg, context)  # the plain path, unchanged

    def legacy_train(inner: Message, ctxt: Context) -> Message:
        return _legacy_train(inner, ctxt, call_next)

    try:
        if not secure:
            raise PolicyRefusal(
                "run-config secure-aggregation = true, but this train message is not part "
                "of the SecAgg+ protocol: the update is not sent unmasked"
            )
        with _quiet_protocol():
            return secaggplus_mod(msg, context, legacy_train)
    except _HandlerError as error:  # the handler's own (value-free) error reply
        return Message(error.reply.error, reply_to=msg)
    except (PolicyRefusal, ValueError, KeyError, TypeError) as error:
        # The protocol's checks (Flower's texts) and ours name stages and keys only.
        logger.warning("node %s: secure aggregation: %s", context.node_id, error)
        reason = f"{type(error).__name__}: {error}"
        failure = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason)
        return Message(failure, reply_to=msg)


def _quiet_protocol() -> contextlib.AbstractContextManager[None]:
    """Flower's mod logs every stage of every node at DEBUG: progress, not news."""
    return _flower_level(logging.INFO)


@contextlib.contextmanager
def _flower_level(level: int) -> Iterator[None]:
    flower = logging.getLogger("flwr")
    previous = flower.level
    flower.setLevel(max(previous, level))
    try:
        yield
    finally:
        flower.setLevel(previous)


def user_level(context: Context) -> bool:
    """Whether the run is under user-level DP (run-config ``privacy-unit`` user or both)."""
    return context.run_config.get("privacy-unit", "record") in ("user", "both")


def _legacy_train(msg: Message, context: Context, call_next: Handler) -> Message:
    """The masked-vector stage: legacy FitIns in, this app's train handler, FitRes out.

    Under user-level DP (DP-FedAvg composed with SecAgg+) the update is clipped here,
    before it is masked, by Flower's legacy ``fixedclipping_mod`` (the client-side half
    of ``DifferentialPrivacyClientSideFixedClipping``, which sends the clipping norm in
    the fit config), and its weight is 1: equal weights, the server divides by ``m``.
    """
    if not user_level(context):
        reply = _legacy_fit(msg, context, call_next, equal_weight=False)
    else:
        # Flower's mod rebuilds the reply from the FitRes alone: the ledger and the
        # metrics that travel beside the masked vector are put back after it.
        beside: dict[str, Any] = {}

        def fit(_stripped: Message, ctxt: Context) -> Message:
            out = _legacy_fit(msg, ctxt, call_next, equal_weight=True)
            beside.update({k: out.content[k] for k in ("metrics", "privacy") if k in out.content})
            beside[""] = out
            return out

        try:
            with _flower_level(logging.WARNING):  # its INFO line on every client, every round
                reply = fixedclipping_mod(_without_array_names(msg), context, fit)
        except ZeroDivisionError:
            if "" not in beside:  # raised by the training, not by the clipping
                raise
            # Flower's clip divides by the update's norm: a zero update (the global model
            # sent back) needs no clipping and is sent as it is.
            reply = beside[""]
        del beside[""]
        for key, record in beside.items():
            reply.content[key] = record
    fitres = compat.recorddict_to_fitres(reply.content, keep_input=True)
    _check_fits_quantization(
        context, weight=fitres.num_examples, ndarrays=parameters_to_ndarrays(fitres.parameters)
    )
    return reply


def _without_array_names(msg: Message) -> Message:
    """``msg`` without the list of array names, which Flower's FitIns conversion (in
    ``fixedclipping_mod``) cannot hold: legacy configs take scalars only."""
    content = RecordDict(dict(msg.content.items()))
    legacy_config = msg.content.config_records[FITINS_CONFIG]
    content[FITINS_CONFIG] = ConfigRecord(
        {k: v for k, v in legacy_config.items() if k != ARRAY_NAMES_KEY}
    )
    return Message(metadata=msg.metadata, content=content)


def _legacy_fit(
    msg: Message, context: Context, call_next: Handler, *, equal_weight: bool
) -> Message:
    """This app's train handler on a legacy FitIns; the reply as a FitRes record."""
    names, arrays, config = _from_legacy(msg.content, FITINS_PARAMETERS, FITINS_CONFIG)
    inner = Message(metadata=msg.metadata, content=RecordDict({"arrays": arrays, "config": config}))
    reply = call_next(inner, context)
    if reply.has_error():
        raise _HandlerError(reply)
    metrics = reply.content["metrics"]
    weight = 1 if equal_weight else int(metrics["num-examples"])  # type: ignore[arg-type]
    ndarrays = [reply.content["arrays"][name].numpy() for name in names]
    fitres = FitRes(
        status=Status(code=Code.OK, message="Success"),
        parameters=ndarrays_to_parameters(ndarrays),
        num_examples=weight,
        metrics=dict(metrics),  # type: ignore[arg-type]
    )
    out = compat.fitres_to_recorddict(fitres, keep_input=False)
    # The ledger and the metrics travel in the clear beside the masked vector, as without
    # secure aggregation: the server checks that the ledger grew by the steps reported.
    out["metrics"] = metrics
    if "privacy" in reply.content:
        out["privacy"] = reply.content["privacy"]
    return Message(out, reply_to=msg)


def _legacy_evaluate(msg: Message, context: Context, call_next: Handler) -> Message:
    """The workflow's client evaluation: legacy EvaluateIns in, EvaluateRes out."""
    _, arrays, config = _from_legacy(msg.content, EVALUATEINS_PARAMETERS, EVALUATEINS_CONFIG)
    inner = Message(metadata=msg.metadata, content=RecordDict({"arrays": arrays, "config": config}))
    reply = call_next(inner, context)
    if reply.has_error():
        return reply
    metrics: MetricRecord = reply.content["metrics"]
    result = EvaluateRes(
        status=Status(code=Code.OK, message="Success"),
        loss=float(metrics["eval-loss"]),  # type: ignore[arg-type]
        num_examples=int(metrics["num-examples"]),  # type: ignore[arg-type]
        metrics=dict(metrics),  # type: ignore[arg-type]
    )
    return Message(compat.evaluateres_to_recorddict(result), reply_to=msg)


def _from_legacy(
    content: RecordDict, parameters_key: str, config_key: str
) -> tuple[list[str], ArrayRecord, ConfigRecord]:
    """Array names, the arrays by name, and the config of a legacy Fit/EvaluateIns record."""
    legacy_config = content.config_records[config_key]
    names = [str(name) for name in legacy_config[ARRAY_NAMES_KEY]]  # type: ignore[union-attr]
    positional = content.array_records[parameters_key]
    if len(names) != len(positional):
        raise ValueError(
            f"secure aggregation: {len(positional)} arrays sent for {len(names)} names"
        )
    arrays = ArrayRecord(dict(zip(names, positional.values(), strict=True)))
    config = ConfigRecord({k: v for k, v in legacy_config.items() if k != ARRAY_NAMES_KEY})
    return names, arrays, config


def _check_fits_quantization(context: Context, *, weight: int, ndarrays: list) -> None:
    """Refuse what Flower's quantization would silently distort.

    ``secaggplus_mod`` multiplies the weights by ``weight / max_weight`` and clips the
    result to ``[-clipping_range, clipping_range]`` before quantizing; a weight above
    ``max_weight`` or a value beyond the range would be clipped with only a log warning,
    and the server could not tell.
    """
    state = context.state.config_records[RECORD_KEY_STATE]
    max_weight = float(state["max_weight"])  # type: ignore[arg-type]
    clipping_range = float(state["clipping_range"])  # type: ignore[arg-type]
    if weight > max_weight:
        raise ValueError(
            f"secure aggregation: this client's weight {weight} exceeds the server's "
            f"max_weight {max_weight:g}"
        )
    largest = max((float(np.max(np.abs(a))) for a in ndarrays if a.size), default=0.0)
    if largest * weight / max_weight > clipping_range:
        raise ValueError(
            f"secure aggregation: a model weight of magnitude {largest:.3g} leaves SecAgg+'s "
            f"quantization range (+-{clipping_range:g} after weighting)"
        )
