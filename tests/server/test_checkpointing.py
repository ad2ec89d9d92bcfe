"""The ServerApp's checkpoint parts: the strategy's own state, when a checkpoint is due."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM

import server.round_recorder as recorder
from fedmodel.config import ConfigError, RunConfig
from fedmodel.models import build_model
from fedmodel.results.checkpoint import CheckpointError, read_state_file, write_state_file
from server.checkpointing import (
    RunCheckpoints,
    load_strategy_state,
    strategy_layers,
    strategy_state_dict,
)
from server.strategies.client_tracking import ClientTracking
from simulations import simulate


def _tracked(strategy) -> ClientTracking:
    return ClientTracking(strategy, require_ledger=True)


def _through_a_file(tmp_path, state):
    write_state_file(tmp_path / "s.pt", "server", {"strategy": state})
    return read_state_file(tmp_path / "s.pt", "server")["strategy"]


def test_fedadam_moments_and_the_tracked_ledgers_survive_exactly(tmp_path):
    saved = _tracked(FedAdam())
    rng = np.random.default_rng(0)
    adam = saved.strategy
    adam.m_t = {"w": rng.normal(size=(3, 2)).astype(np.float32)}
    adam.v_t = {"w": rng.random(size=(3, 2))}
    adam.current_arrays = {"w": rng.normal(size=(3, 2)).astype(np.float32)}
    saved.ledgers = {"partition-0": {"epsilon": 1.5, "history": [[1.1, 0.25, 8]]}}
    saved._steps_seen = {"partition-0": 8}

    fresh = _tracked(FedAdam())
    load_strategy_state(fresh, _through_a_file(tmp_path, strategy_state_dict(saved)))
    for name in ("m_t", "v_t", "current_arrays"):
        value = getattr(fresh.strategy, name)["w"]
        assert value.dtype == getattr(adam, name)["w"].dtype
        assert value.tobytes() == getattr(adam, name)["w"].tobytes()
    assert fresh.ledgers == saved.ledgers and fresh._steps_seen == {"partition-0": 8}


def test_fedavgm_momentum_and_its_array_record_come_back_bit_for_bit(tmp_path):
    saved = _tracked(FedAvgM(server_momentum=0.9))
    arrays = ArrayRecord([np.arange(4, dtype=np.float64) / 3, np.ones((2, 2), np.float32)])
    saved.strategy.current_arrays = arrays
    saved.strategy.momentum_vector = [np.full(4, 0.1), np.zeros((2, 2), np.float32)]

    fresh = _tracked(FedAvgM(server_momentum=0.9))
    load_strategy_state(fresh, _through_a_file(tmp_path, strategy_state_dict(saved)))
    restored = fresh.strategy.current_arrays
    assert isinstance(restored, ArrayRecord) and list(restored) == list(arrays)
    assert all(restored[k].data == arrays[k].data for k in arrays)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(fresh.strategy.momentum_vector, saved.strategy.momentum_vector, strict=True)
    )


def test_a_strategy_with_state_dict_gives_its_own_state():
    class Own(FedAvg):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def state_dict(self):
            return {"count": self.count}

        def load_state_dict(self, state):
            self.count = state["count"]

    saved = _tracked(Own())
    saved.strategy.count = 7
    fresh = _tracked(Own())
    load_strategy_state(fresh, strategy_state_dict(saved))
    assert fresh.strategy.count == 7


def test_the_state_of_another_strategy_is_refused():
    state = strategy_state_dict(_tracked(FedAdam()))
    with pytest.raises(CheckpointError, match=r"\['ClientTracking', 'FedAdam'\]; this run builds"):
        load_strategy_state(_tracked(FedAvg()), state)


def test_layers_are_found_down_the_wrapper_chain():
    adam = FedAdam()
    assert list(strategy_layers(_tracked(adam)))[1:] == [adam]


@pytest.mark.parametrize(
    ("every", "rounds", "due"),
    [(1, 4, [1, 2, 3, 4]), (3, 7, [3, 6, 7]), (0, 4, [])],
)
def test_a_checkpoint_is_due_every_n_rounds_and_after_the_last(tmp_path, every, rounds, due):
    config = RunConfig.from_mapping({"num-server-rounds": rounds, "checkpoint-every": every})
    checkpoints = RunCheckpoints(config, run_dir=tmp_path, grid=object())
    assert [r for r in range(1, rounds + 1) if checkpoints.due(r)] == due


# -- run-config initial-model, through a whole (tiny) run ----------------------------------

TINY = {"num-server-rounds": 1, "batch-size": 32, "target-epsilon": 0, "noise-multiplier": 1.0}


def test_a_run_starts_from_the_initial_model_it_names(tmp_path, monkeypatch):
    first = simulate({**TINY, "run-dir": str(tmp_path / "first")}, num_clients=2)
    started_from: list[dict] = []
    call = recorder.RoundRecorder.__call__

    def note_round_0(self, server_round, arrays):
        if server_round == 0:
            started_from.append(arrays.to_torch_state_dict())
        return call(self, server_round, arrays)

    monkeypatch.setattr(recorder.RoundRecorder, "__call__", note_round_0)
    model_pt = first.run_dir / "model.pt"
    second = simulate(
        {**TINY, "initial-model": str(model_pt), "run-dir": str(tmp_path / "second")},
        num_clients=2,
    )
    expected = torch.load(model_pt)
    assert all(torch.equal(started_from[0][k], expected[k]) for k in expected)
    assert second.final.test_accuracy > first.rounds[0].test_accuracy - 0.05


def test_an_initial_model_that_does_not_fit_or_is_missing_stops_before_any_file(tmp_path):
    wrong = build_model("mlp", input_shape=(64,), num_classes=10, hidden_sizes=(32,))
    torch.save(wrong.state_dict(), tmp_path / "wrong.pt")
    for path, message in [
        (tmp_path / "wrong.pt", r"key 'layers.1.weight' has shape \(32, 64\), the model's is"),
        (tmp_path / "missing.pt", "no such file"),
    ]:
        run_dir = tmp_path / path.stem
        with pytest.raises(ConfigError, match=message):
            simulate({**TINY, "initial-model": str(path), "run-dir": str(run_dir)}, num_clients=2)
        assert not run_dir.exists()
