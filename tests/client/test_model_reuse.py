"""The ClientApp reuses one built-in model per thread: replies as from a fresh model."""

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType

from client import client_app as client
from fedmodel.config import RunConfig
from fedmodel.data import data_shape
from fedmodel.models import build_model


def _message(config: RunConfig, kind: str, weights_seed: int) -> Message:
    input_shape, num_classes = data_shape(config)
    torch.manual_seed(weights_seed)
    model = build_model(config.model, input_shape=input_shape, num_classes=num_classes)
    content = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "config": ConfigRecord({"server-round": 1})}
    )
    return Message(content, dst_node_id=7, message_type=kind, group_id="1")


def _context(config: RunConfig, partition: int) -> Context:
    node = {"simulated": True, "partition-id": partition, "num-partitions": 3}
    return Context(
        run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config=config.to_mapping()
    )


def _weights(reply: Message) -> dict[str, torch.Tensor]:
    assert not reply.has_error(), reply.error
    return reply.content["arrays"].to_torch_state_dict()


def test_a_reused_model_trains_and_evaluates_as_a_fresh_one():
    for dp in (True, False):
        config = RunConfig.from_mapping({"target-epsilon": 0.0, "dp": dp})
        client._BUILT_MODELS.clear()
        fresh = _weights(client.app(_message(config, MessageType.TRAIN, 2), _context(config, 1)))
        # the same message after other clients trained and evaluated with the same model
        client.app(_message(config, MessageType.TRAIN, 1), _context(config, 0))
        if dp:  # a node evaluates under DP only on held-out data: leave it as evaluation does
            next(iter(client._BUILT_MODELS.values())).eval()
        else:
            evaluated = client.app(_message(config, MessageType.EVALUATE, 3), _context(config, 2))
            assert not evaluated.has_error(), evaluated.error
        assert len(client._BUILT_MODELS) == 1
        reused = _weights(client.app(_message(config, MessageType.TRAIN, 2), _context(config, 1)))
        assert list(reused) == list(fresh)
        for name, value in fresh.items():
            assert torch.equal(reused[name], value), name


def test_a_model_is_reused_only_where_a_fresh_build_would_be_the_same():
    config = RunConfig.from_mapping({"target-epsilon": 0.0})
    message = _message(config, MessageType.TRAIN, 0)
    client._BUILT_MODELS.clear()
    first = client._model_for(config, message, _context(config, 0))
    assert client._model_for(config, message, _context(config, 1)) is first
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        wider = client._model_for(config, message, _context(config, 0))
    finally:
        torch.set_default_dtype(previous)
    assert wider is not first and next(wider.parameters()).dtype == torch.float64
    other = RunConfig.from_mapping({"target-epsilon": 0.0, "hidden-sizes": "32"})
    assert client._model_for(other, message, _context(other, 0)) is not first
