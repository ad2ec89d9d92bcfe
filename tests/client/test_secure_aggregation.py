"""The ClientApp under secure aggregation: no unmasked update, the plain path unchanged."""

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType

from client.client_app import app as client_app
from fedmodel.config import RunConfig
from fedmodel.data import data_shape
from fedmodel.models import build_model

NODE = {"simulated": True, "partition-id": 0, "num-partitions": 3}


def _train_message(config: RunConfig) -> Message:
    input_shape, num_classes = data_shape(config)
    model = build_model(
        config.model,
        input_shape=input_shape,
        num_classes=num_classes,
        hidden_sizes=config.hidden_layer_sizes,
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "config": ConfigRecord({"server-round": 1}),
        }
    )
    return Message(content, dst_node_id=7, message_type=MessageType.TRAIN, group_id="1")


def _context(config: RunConfig) -> Context:
    return Context(
        run_id=1,
        node_id=7,
        node_config=dict(NODE),
        state=RecordDict(),
        run_config=config.to_mapping(),
    )


def test_a_plain_train_message_is_refused_under_secure_aggregation():
    config = RunConfig.from_mapping({"secure-aggregation": True, "target-epsilon": 0.0})
    context = _context(config)
    reply = client_app(_train_message(config), context)
    assert reply.has_error()
    assert "not sent unmasked" in reply.error.reason
    assert "client-privacy" not in context.state  # refused before any training


def test_without_secure_aggregation_the_plain_train_message_is_answered():
    config = RunConfig.from_mapping({"target-epsilon": 0.0})
    reply = client_app(_train_message(config), _context(config))
    assert not reply.has_error()
    assert {"arrays", "metrics", "privacy"} <= set(reply.content.keys())


def _user_level_fit(delta_scale: float):
    """One masked-vector-stage call of the user-level path, with a stand-in trainer."""
    import numpy as np
    from flwr.app import Array, MetricRecord
    from flwr.common import parameters_to_ndarrays
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_STATE
    from flwr.compat.common import recorddict_compat as compat

    from client.secure_aggregation import _legacy_train

    rng = np.random.default_rng(0)
    glob = {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": np.zeros(3, np.float32)}
    delta = {
        k: (delta_scale * rng.normal(size=v.shape)).astype(np.float32) for k, v in glob.items()
    }
    content = RecordDict(
        {
            "fitins.parameters": ArrayRecord(
                {str(i): Array(a) for i, a in enumerate(glob.values())}
            ),
            "fitins.config": ConfigRecord(
                {"array-names": list(glob), "clipping_norm": 0.5, "server-round": 1}
            ),
        }
    )
    msg = Message(content, dst_node_id=7, message_type=MessageType.TRAIN, group_id="1")
    context = Context(
        run_id=1,
        node_id=7,
        node_config=dict(NODE),
        state=RecordDict(),
        run_config={"secure-aggregation": True, "privacy-unit": "user"},
    )
    context.state.config_records[RECORD_KEY_STATE] = ConfigRecord(
        {"max_weight": 1.0, "clipping_range": 8.0}
    )

    def trainer(inner: Message, _context: Context) -> Message:  # the ClientApp's train handler
        arrays = inner.content["arrays"]
        trained = {k: Array(arrays[k].numpy() + delta[k]) for k in glob}
        out = RecordDict(
            {"arrays": ArrayRecord(trained), "metrics": MetricRecord({"num-examples": 90})}
        )
        return Message(out, reply_to=inner)

    reply = _legacy_train(msg, context, trainer)
    fitres = compat.recorddict_to_fitres(reply.content, keep_input=True)
    sent = parameters_to_ndarrays(fitres.parameters)
    update = [s - g for s, g in zip(sent, glob.values(), strict=True)]
    norm = float(np.sqrt(sum((u.astype(np.float64) ** 2).sum() for u in update)))
    return fitres, norm, reply


def test_under_user_level_dp_the_update_is_clipped_and_weighs_one_before_masking():
    fitres, norm, reply = _user_level_fit(delta_scale=1.0)  # norm about 4 > C = 0.5
    assert abs(norm - 0.5) < 1e-5
    assert fitres.num_examples == 1  # equal weights: not the 90 examples
    assert reply.content["metrics"]["num-examples"] == 90  # the clear metrics travel as before


def test_a_zero_update_is_sent_unclipped_under_user_level_dp():
    # Flower's clip divides by the update's norm; a zero update needs no clipping.
    fitres, norm, _ = _user_level_fit(delta_scale=0.0)
    assert norm == 0.0 and fitres.num_examples == 1
