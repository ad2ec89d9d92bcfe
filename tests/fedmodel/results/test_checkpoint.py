"""Checkpoint files: exact round trips, damage and mismatches refused, the initial model."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from fedmodel.config import ConfigError, RunConfig
from fedmodel.models import build_model
from fedmodel.results.checkpoint import (
    CLIENTS_FILE,
    PREVIOUS_CLIENTS_FILE,
    Checkpoint,
    CheckpointError,
    checkpoint_dir,
    decode_state,
    encode_state,
    load_client_states,
    load_initial_model,
    read_state_file,
    resumable_run,
    rng_state,
    save_client_states,
    set_rng_state,
    write_state_file,
)


def _model():
    return build_model("mlp", input_shape=(64,), num_classes=10, hidden_sizes=(8,))


def _checkpoint(config: RunConfig, round_: int = 2) -> Checkpoint:
    return Checkpoint(
        round=round_,
        run_config=config.to_mapping(),
        model=_model().state_dict(),
        strategy=[{"class": "FedAvg", "state": {}}],
        recorder={"rounds": []},
        rng=rng_state(),
    )


def test_numpy_values_of_every_dtype_survive_a_file_bit_for_bit(tmp_path):
    state = {
        "float32": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
        "float64": np.array([np.pi, np.nan, -np.inf]),
        "uint32": np.array([0, 2**32 - 1], dtype=np.uint32),
        "bool": np.array([True, False]),
        "scalar": np.float64(0.1),
        "transposed": np.arange(6.0).reshape(2, 3).T,  # not C-contiguous
        "nested": {3: [np.int64(7), ("a", b"raw", None)], "tensor": torch.ones(2)},
    }
    write_state_file(tmp_path / "s.pt", "server", state)
    back = read_state_file(tmp_path / "s.pt", "server")
    for key in ("float32", "float64", "uint32", "bool", "transposed"):
        assert back[key].dtype == state[key].dtype and back[key].shape == state[key].shape
        assert back[key].tobytes() == np.ascontiguousarray(state[key]).tobytes()
    assert back["scalar"] == state["scalar"] and back["scalar"].dtype == np.float64
    assert back["nested"][3][0] == 7 and back["nested"][3][1] == ("a", b"raw", None)
    assert torch.equal(back["nested"]["tensor"], torch.ones(2))
    assert decode_state(encode_state([1, (2.5,)])) == [1, (2.5,)]


def test_a_state_holding_arbitrary_objects_is_refused():
    with pytest.raises(TypeError, match="cannot hold a object"):
        encode_state({"x": object()})


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[:-50], "damaged"),  # truncated
        (lambda data: data[:-10] + bytes(10), "damaged"),  # altered
        (lambda data: b"PK" + data, "not a fedmodel checkpoint"),
        (lambda data: data.replace(b" server ", b" clients ", 1), "expected v1 'server'"),
    ],
)
def test_a_damaged_or_foreign_file_is_refused(tmp_path, damage, message):
    config = RunConfig.from_mapping({"run-dir": str(tmp_path)})
    _checkpoint(config).save(tmp_path)
    path = checkpoint_dir(tmp_path) / "server.pt"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=message):
        Checkpoint.load(tmp_path)


def test_a_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        Checkpoint.load(tmp_path)


def test_the_random_generators_continue_where_they_were_saved(tmp_path):
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    write_state_file(tmp_path / "rng.pt", "server", {"rng": rng_state()})
    expected = (random.random(), np.random.normal(size=3), torch.rand(3))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(read_state_file(tmp_path / "rng.pt", "server")["rng"])
    assert random.random() == expected[0]
    assert np.array_equal(np.random.normal(size=3), expected[1])
    assert torch.equal(torch.rand(3), expected[2])


def test_resuming_under_another_run_config_names_the_keys_that_differ(tmp_path):
    config = RunConfig.from_mapping({"num-server-rounds": 5, "run-dir": str(tmp_path)})
    checkpoint = _checkpoint(config)
    # How it is resumed and how often it checkpoints may change.
    checkpoint.check_config(config.replace(resume=True, checkpoint_every=3))
    with pytest.raises(CheckpointError, match=r"seed = 1 \(checkpoint: 0\)") as error:
        checkpoint.check_config(config.replace(seed=1, learning_rate=0.5, resume=True))
    assert "learning-rate" in str(error.value)
    with pytest.raises(CheckpointError, match="finished all 5 rounds; nothing to resume"):
        _checkpoint(config, round_=5).check_config(config.replace(resume=True))


def test_a_resumable_run_needs_its_config_and_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="holds no run to resume"):
        resumable_run(tmp_path)
    config = RunConfig.from_mapping({"run-dir": str(tmp_path)})
    document = {"run_config": config.to_mapping(), "num_nodes": 4}
    (tmp_path / "config.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        resumable_run(tmp_path)
    _checkpoint(config).save(tmp_path)
    run_config, document = resumable_run(tmp_path)
    assert run_config == config.to_mapping() and document["num_nodes"] == 4


def test_client_states_are_taken_only_from_the_servers_round(tmp_path):
    save_client_states(tmp_path, server_round=2, nodes={1001: {"state": b"round 2"}})
    assert load_client_states(tmp_path, server_round=2) == {1001: {"state": b"round 2"}}
    # A crash after the clients' file of round 4 and before the server's: the server's
    # checkpoint is still of round 2, and so is the previous clients' file.
    save_client_states(tmp_path, server_round=4, nodes={1001: {"state": b"round 4"}})
    assert (checkpoint_dir(tmp_path) / PREVIOUS_CLIENTS_FILE).exists()
    assert load_client_states(tmp_path, server_round=2) == {1001: {"state": b"round 2"}}
    assert load_client_states(tmp_path, server_round=4) == {1001: {"state": b"round 4"}}
    with pytest.raises(CheckpointError, match="round 3 but clients.pt holds round 4"):
        load_client_states(tmp_path, server_round=3)
    (checkpoint_dir(tmp_path) / CLIENTS_FILE).unlink()
    (checkpoint_dir(tmp_path) / PREVIOUS_CLIENTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="no clients.pt"):
        load_client_states(tmp_path, server_round=4)


def test_an_initial_model_that_fits_is_loaded_even_in_another_dtype(tmp_path):
    source = _model()
    torch.save({k: v.double() for k, v in source.state_dict().items()}, tmp_path / "model.pt")
    target = _model()
    load_initial_model(target, tmp_path / "model.pt")
    for key, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], tensor)


def test_an_initial_model_that_does_not_fit_names_the_first_difference(tmp_path):
    wider = build_model("mlp", input_shape=(64,), num_classes=10, hidden_sizes=(16,))
    torch.save(wider.state_dict(), tmp_path / "wide.pt")
    with pytest.raises(ConfigError, match=r"key 'layers.1.weight' has shape \(16, 64\), the mod"):
        load_initial_model(_model(), tmp_path / "wide.pt")
    state = _model().state_dict()
    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pt")
    with pytest.raises(ConfigError, match="has key 'extra.weight', which the model does not"):
        load_initial_model(_model(), tmp_path / "extra.pt")
    del state["layers.3.bias"]
    torch.save(state, tmp_path / "short.pt")
    with pytest.raises(ConfigError, match="lacks key 'layers.3.bias'"):
        load_initial_model(_model(), tmp_path / "short.pt")


def test_a_missing_or_unreadable_initial_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"'initial-model' = '.*nope.pt': no such file"):
        load_initial_model(_model(), tmp_path / "nope.pt")
    with pytest.raises(ConfigError, match="is a folder; give a state dict file"):
        load_initial_model(_model(), tmp_path)
    (tmp_path / "junk.pt").write_text("not a model")
    with pytest.raises(ConfigError, match="cannot be read as a torch state dict"):
        load_initial_model(_model(), tmp_path / "junk.pt")
