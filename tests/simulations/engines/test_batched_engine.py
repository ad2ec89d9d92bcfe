"""The batched engine against the sequential in-process engine: same runs, same results."""

import numpy as np
import pytest
import torch

import fedmodel.data as data
import fedmodel.data.digits as digits
from fedmodel.config import RunConfig
from fedmodel.data.datasets import load_dataset
from fedmodel.data.splits import tensor_dataset
from simulations.engines.batched import batching_obstacle, choose_engine
from simulations.simulate import simulate

# 12 clients, 3 sampled per round: ~120 examples and a few steps each.
BASE = {
    "num-server-rounds": 3,
    "batch-size": 32,
    "learning-rate": 0.5,
    "seed": 3,
    "fraction-train": 0.25,
}


@pytest.fixture()
def float64(monkeypatch):
    """Digits as float64 and float64 models (float32 agreement is only ~1e-7)."""

    def as_float64(x, y):
        x32, labels = tensor_dataset(x, y).tensors
        return torch.utils.data.TensorDataset(torch.as_tensor(np.asarray(x, np.float64)), labels)

    previous = torch.get_default_dtype()
    monkeypatch.setattr(digits, "tensor_dataset", as_float64)
    load_dataset.cache_clear()
    data._partitions.cache_clear()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
    load_dataset.cache_clear()
    data._partitions.cache_clear()


def _weights(result):
    return torch.load(result.run_dir / "model.pt")


def _run(tmp_path, engine, config, name, **kwargs):
    return simulate(
        {**config, "run-dir": str(tmp_path / f"{name}-{engine}")},
        engine=engine,
        num_clients=12,
        **kwargs,
    )


def _rounds(result):
    """Per-round metrics that must agree (the round time may not)."""
    return [{k: v for k, v in vars(r).items() if k != "seconds"} for r in result.rounds]


CASES = {
    "mlp-dp-sigma0-equal": {
        "model": "mlp",
        "dp": True,
        "target-epsilon": 0.0,
        "noise-multiplier": 0.0,
        "momentum": 0.5,
    },
    "mlp-nodp-unequal": {"model": "mlp", "dp": False, "partitioner": "dirichlet", "momentum": 0.9},
    "cnn-dp-sigma0-unequal": {
        "model": "cnn",
        "dp": True,
        "target-epsilon": 0.0,
        "noise-multiplier": 0.0,
        "momentum": 0.5,
        "partitioner": "dirichlet",
    },
    "cnn-nodp-equal": {"model": "cnn", "dp": False, "momentum": 0.9},
}


@pytest.mark.parametrize("case", list(CASES))
def test_global_weights_after_three_rounds_equal_sequential(float64, tmp_path, case, capsys):
    config = {**BASE, **CASES[case]}
    sequential = _run(tmp_path, "inprocess", config, case)
    batched = _run(tmp_path, "batched", config, case)
    assert "ClientApp instead" not in capsys.readouterr().out  # it did batch
    expected, got = _weights(sequential), _weights(batched)
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert value.dtype == torch.float64
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-12)
    for a, b in zip(_rounds(sequential), _rounds(batched), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-9, nan_ok=True), key


def test_with_noise_ledgers_and_epsilon_equal_sequential(tmp_path):
    """DP with noise (float32): the same ε, round by round, and the same ledgers."""
    config = {
        **BASE,
        "num-server-rounds": 2,
        "partitioner": "dirichlet",
        "target-epsilon": 0.0,
        "noise-multiplier": 1.1,
    }
    sequential = _run(tmp_path, "inprocess", config, "noise")
    batched = _run(tmp_path, "batched", config, "noise")
    for a, b in zip(sequential.rounds, batched.rounds, strict=True):
        assert (a.epsilon_max, a.epsilon_mean, a.clients_trained) == (
            b.epsilon_max,
            b.epsilon_mean,
            b.clients_trained,
        )
    assert sequential.final.epsilon_max > 0
    # Every client's ledger (sigma, q, steps per round) and ε, as the run folder keeps them.
    ledgers = sorted(
        p.relative_to(sequential.run_dir) for p in sequential.run_dir.glob("privacy*/**/*.json")
    )
    ledgers += [p.relative_to(sequential.run_dir) for p in sequential.run_dir.glob("privacy.json")]
    assert len(ledgers) >= 4  # privacy.json and one file per client that trained
    for name in ledgers:
        assert (batched.run_dir / name).read_bytes() == (sequential.run_dir / name).read_bytes()
    # The same seeds draw the same noise: weights agree to float32 rounding.
    for key, value in _weights(sequential).items():
        torch.testing.assert_close(_weights(batched)[key], value, rtol=0, atol=1e-4)


def test_what_cannot_be_batched_runs_sequentially_with_one_reason(tmp_path, capsys):
    config = {**BASE, "num-server-rounds": 1}
    result = _run(tmp_path, "batched", config, "secure", noise_source="secure")
    out = capsys.readouterr().out
    assert out.count("batched engine: noise-source = secure") == 1
    assert result.final.clients_trained == 3  # of 12


def test_obstacles_name_the_setting():
    config = RunConfig.from_mapping({})
    assert batching_obstacle(config, noise_source="seeded", workers=0) is None
    assert "--workers 2" in batching_obstacle(config, noise_source="seeded", workers=2)
    byzantine = RunConfig.from_mapping({"byzantine-fraction": 0.2})
    assert "byzantine" in batching_obstacle(byzantine, noise_source="seeded", workers=0)


def test_auto_picks_batched_except_for_a_cnn_through_vmap_at_batch_60():
    small = RunConfig.from_mapping({"model": "mlp", "batch-size": 10})
    assert choose_engine(small, noise_source="seeded", workers=0)[0] == "batched"
    dp_cnn = RunConfig.from_mapping({"model": "cnn", "batch-size": 60, "dp": True})
    engine, reason = choose_engine(dp_cnn, noise_source="seeded", workers=0)
    assert engine == "batched" and "layer by layer" in reason  # faster at B = 60 too
    cnn = RunConfig.from_mapping({"model": "cnn", "batch-size": 60, "dp": False})
    engine, reason = choose_engine(cnn, noise_source="seeded", workers=0)
    assert engine == "inprocess" and "compute-bound" in reason
    secure = choose_engine(small, noise_source="secure", workers=0)
    assert secure[0] == "inprocess" and "secure" in secure[1]
