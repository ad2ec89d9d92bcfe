"""On a CUDA device: the same DP run as on the CPU, up to the noise (README, "GPU").

Runs only where ``torch.cuda.is_available()``; CI (CPU only) skips the module. On the
GPU the seeded noise comes from CUDA's Philox generator instead of the CPU's Mersenne
Twister, so weights differ from the CPU run; everything the accountant reads (σ, q,
steps) does not, so ε must be identical, and accuracy must agree within the noise.
"""

import json

import pytest
import torch

from fedmodel.config import RunConfig
from fedmodel.data import load_partition
from fedmodel.models import build_model
from fedmodel.privacy import PrivacyLedger
from fedmodel.training import TrainingSettings, evaluate, train_locally
from fedmodel.training.device import resolve_device
from simulations import simulate
from simulations.engines import ENGINES

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available())"
)
CONFIG = {
    "num-server-rounds": 3,
    "batch-size": 32,
    "learning-rate": 0.5,
    "seed": 5,
    "target-epsilon": 0,
    "noise-multiplier": 1.0,
}


def _run(tmp_path, device, engine="inprocess"):
    run_dir = tmp_path / f"{device}-{engine}"
    return simulate(
        {**CONFIG, "device": device, "run-dir": str(run_dir)}, num_clients=4, engine=engine
    )


@pytest.mark.slow
def test_a_dp_run_on_cuda_spends_the_same_epsilon_and_reaches_the_cpu_accuracy(tmp_path):
    cpu, cuda = _run(tmp_path, "cpu"), _run(tmp_path, "cuda")
    assert [r.epsilon_max for r in cuda.rounds] == [r.epsilon_max for r in cpu.rounds]
    assert cuda.final.epsilon_max > 0
    for client in ("partition-0", "partition-3"):  # the ledgers too, step for step
        ledgers = [
            json.loads((r.run_dir / "privacy" / f"{client}.json").read_text()) for r in (cpu, cuda)
        ]
        assert ledgers[0]["history"] == ledgers[1]["history"]
    # 360 test digits, 4 clients, 3 rounds at σ = 1: a few points of noise either way.
    assert abs(cuda.final.test_accuracy - cpu.final.test_accuracy) <= 0.08
    assert cuda.final.test_accuracy > 0.5
    # Weights leave the GPU: the run folder holds CPU tensors, as on the CPU.
    weights = torch.load(cuda.run_dir / "model.pt")
    assert all(value.device.type == "cpu" for value in weights.values())


def test_training_on_cuda_returns_cpu_weights_and_records_the_cpu_ledger():
    dataset = load_partition(RunConfig(), partition_id=0, num_partitions=3)
    settings = TrainingSettings(epochs=1, batch_size=32, learning_rate=0.5, noise_multiplier=1.0)
    ledgers = {}
    for name, source in (("cpu", "seeded"), ("cuda", "seeded"), ("cuda-secure", "secure")):
        torch.manual_seed(0)
        model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10)
        device = resolve_device(name.split("-")[0])
        ledgers[name] = PrivacyLedger(delta=1e-5)
        result = train_locally(
            model,
            dataset,
            settings=settings,
            ledger=ledgers[name],
            seed=2,
            noise_source=source,
            device=device,
        )
        assert next(model.parameters()).device.type == device.type  # trained there
        assert all(v.device.type == "cpu" for v in result.state_dict.values())
        loss, accuracy = evaluate(model, dataset, device=device)
        assert 0 <= accuracy <= 1 and loss > 0
    # Same batches (drawn on the CPU from the seed), same steps: the same accounting.
    assert ledgers["cuda"].history == ledgers["cpu"].history
    assert ledgers["cuda-secure"].history == ledgers["cpu"].history


def test_seeded_noise_on_cuda_is_drawn_on_the_device_and_repeats_with_the_seed():
    dataset = load_partition(RunConfig(), partition_id=1, num_partitions=3)
    settings = TrainingSettings(epochs=1, batch_size=32, learning_rate=0.5, noise_multiplier=1.0)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10)
        runs.append(
            train_locally(
                model,
                dataset,
                settings=settings,
                seed=4,
                ledger=PrivacyLedger(delta=1e-5),
                device=resolve_device("cuda"),
            )
        )
    # Same seed, same device: the same noise (Philox); kernels may still reorder sums, so
    # this is a closeness check, not bit equality (README, "GPU", reproducibility).
    for key, value in runs[0].state_dict.items():
        torch.testing.assert_close(runs[1].state_dict[key], value, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif("batched" not in ENGINES, reason="no batched engine (issue 13) yet")
def test_the_batched_engine_runs_on_cuda_with_the_sequential_epsilon(tmp_path):
    sequential, batched = _run(tmp_path, "cuda"), _run(tmp_path, "cuda", engine="batched")
    assert [r.epsilon_max for r in batched.rounds] == [r.epsilon_max for r in sequential.rounds]
    assert abs(batched.final.test_accuracy - sequential.final.test_accuracy) <= 0.08
