"""Device resolution: spelling, CUDA refusals, the node's own device, the CPU path unchanged."""

import pytest
import torch
from flwr.app import Context, RecordDict

from client.client_app import _run_config
from fedmodel.config import ConfigError, RunConfig
from fedmodel.data import load_partition
from fedmodel.models import build_model
from fedmodel.privacy import PrivacyLedger
from fedmodel.training import TrainingSettings, evaluate, train_locally
from fedmodel.training.device import resolve_device

CUDA = torch.cuda.is_available()
no_cuda_only = pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without CUDA")
cuda_only = pytest.mark.skipif(not CUDA, reason="needs a CUDA device (tests/gpu/ has the rest)")
# Every spelling class: the default, CPU, CUDA by name and index, out of range, misspelt.
SPECS = ["auto", "cpu", "cuda", "cuda:0", "cuda:1", "cuda:99", "gpu", "cuda:", "CPU", "cuda:-1"]


def test_auto_is_cuda_exactly_when_torch_finds_it_and_cpu_is_always_there():
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "CPU", "cuda:-1", "cuda:0:1", ""])
def test_a_misspelt_device_is_refused_with_the_allowed_spellings(spec):
    with pytest.raises(ValueError, match=r"is not one of 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        resolve_device(spec)


@no_cuda_only
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_where_there_is_none_is_refused_not_run_on_the_cpu(spec):
    with pytest.raises(ValueError, match=rf"device '{spec}' needs CUDA, but .*use 'auto' or 'cpu'"):
        resolve_device(spec)
    with pytest.raises(ConfigError, match=rf"run-config key 'device' = '{spec}' is not available"):
        RunConfig(device=spec)


@cuda_only
def test_a_cuda_index_past_the_last_device_is_out_of_range():
    count = torch.cuda.device_count()
    assert resolve_device(f"cuda:{count - 1}") == torch.device("cuda", count - 1)
    with pytest.raises(ValueError, match=rf"out of range: this machine has {count} CUDA"):
        resolve_device(f"cuda:{count}")


@pytest.mark.parametrize("spec", SPECS)
def test_the_run_config_accepts_exactly_the_devices_that_resolve(spec):
    # config.py cannot import the training package (a cycle), so it repeats the rules.
    try:
        resolve_device(spec)
        resolves = True
    except ValueError:
        resolves = False
    try:
        RunConfig(device=spec)
        accepted = True
    except ConfigError as error:
        assert "run-config key 'device'" in str(error)
        accepted = False
    assert accepted == resolves


def _context(*, run_device: str, node_device: str | None = None) -> Context:
    node_config = {"partition-id": 0, "num-partitions": 2}
    if node_device is not None:
        node_config["device"] = node_device
    return Context(
        run_id=1,
        node_id=5,
        node_config=node_config,
        state=RecordDict(),
        # As the server sends it: not validated on this machine.
        run_config={**RunConfig().to_mapping(), "device": run_device},
    )


def test_the_nodes_own_device_wins_over_the_run_config():
    assert _run_config(_context(run_device="cuda:7", node_device="cpu")).device == "cpu"
    assert _run_config(_context(run_device="cpu")).device == "cpu"


@no_cuda_only
def test_a_node_without_cuda_refuses_a_cuda_run_and_a_bad_node_device_is_named():
    with pytest.raises(ConfigError, match="run-config key 'device' = 'cuda' is not available"):
        _run_config(_context(run_device="cuda"))
    with pytest.raises(ConfigError, match="node-config key 'device': device 'cuda' needs CUDA"):
        _run_config(_context(run_device="cpu", node_device="cuda"))
    with pytest.raises(ConfigError, match="node-config key 'device': device 'gpu' is not one"):
        _run_config(_context(run_device="cpu", node_device="gpu"))


def _train(device):
    dataset = load_partition(RunConfig(), partition_id=0, num_partitions=3)
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10)
    ledger = PrivacyLedger(delta=1e-5)
    settings = TrainingSettings(epochs=1, batch_size=32, learning_rate=0.5, noise_multiplier=1.0)
    result = train_locally(model, dataset, settings=settings, ledger=ledger, seed=3, device=device)
    return result, ledger, evaluate(model, dataset, device=device)


def test_the_cpu_path_is_bit_identical_whatever_names_the_cpu():
    baseline, ledger, scores = _train(None)  # the call as it was before devices existed
    names = [torch.device("cpu")] + ([] if CUDA else [resolve_device("auto")])
    for device in names:
        result, other_ledger, other_scores = _train(device)
        assert result.state_dict.keys() == baseline.state_dict.keys()
        for key, value in baseline.state_dict.items():
            assert torch.equal(result.state_dict[key], value), key
        assert other_ledger.history == ledger.history and other_scores == scores
    assert all(value.device.type == "cpu" for value in baseline.state_dict.values())
