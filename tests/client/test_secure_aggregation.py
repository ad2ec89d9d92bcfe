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
