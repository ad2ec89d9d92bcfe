import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedmodel.config import RunConfig
from fedmodel.data import load_dataset, load_partition
from fedmodel.models import build_model
from fedmodel.privacy import PrivacyLedger
from fedmodel.training import TrainingSettings, evaluate, sample_rate_for, train_locally


def _digits_client():
    return load_partition(RunConfig(), partition_id=0, num_partitions=3)


def test_one_dp_step_is_exactly_clipped_summed_noised_and_averaged():
    """Golden check of the DP-SGD math with noise 0 and a full batch (q = 1)."""
    torch.manual_seed(0)
    x, y = torch.randn(6, 4) * 3, torch.tensor([0, 1, 2, 0, 1, 2])
    model = nn.Linear(4, 3)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    lr, clip = 0.1, 0.5

    expected = {k: torch.zeros_like(v) for k, v in start.items()}
    for i in range(6):
        reference = nn.Linear(4, 3)
        reference.load_state_dict(start)
        nn.functional.cross_entropy(reference(x[i : i + 1]), y[i : i + 1]).backward()
        grads = {"weight": reference.weight.grad, "bias": reference.bias.grad}
        norm = torch.sqrt(sum((g**2).sum() for g in grads.values()))
        factor = min(1.0, clip / float(norm))
        for k in expected:
            expected[k] += grads[k] * factor
    expected = {k: start[k] - lr * expected[k] / 6 for k in start}

    ledger = PrivacyLedger(delta=1e-5)
    settings = TrainingSettings(
        epochs=1, batch_size=6, learning_rate=lr, noise_multiplier=0.0, max_grad_norm=clip
    )
    result = train_locally(model, TensorDataset(x, y), settings=settings, ledger=ledger, seed=0)
    assert result.steps == 1 and ledger.history == [(0.0, 1.0, 1)]
    for k in start:
        torch.testing.assert_close(result.state_dict[k], expected[k], rtol=1e-5, atol=1e-6)


def test_every_dp_step_is_recorded_in_the_ledger(opacus_rdp_epsilon):
    dataset = _digits_client()
    ledger = PrivacyLedger(delta=1e-5)
    settings = TrainingSettings(epochs=2, batch_size=32, learning_rate=0.5, noise_multiplier=1.2)
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10)
    result = train_locally(model, dataset, settings=settings, ledger=ledger, seed=1)
    q = sample_rate_for(len(dataset), 32)
    assert result.steps == 2 * round(1 / q)
    assert ledger.history == [(1.2, q, result.steps)]
    expected = opacus_rdp_epsilon([(1.2, q, result.steps)], delta=1e-5)
    assert ledger.epsilon() == pytest.approx(expected, abs=1e-9)


def test_weights_leave_without_the_opacus_prefix_and_model_is_plain_again():
    model = build_model("cnn", input_shape=(1, 8, 8), num_classes=10)
    keys = set(model.state_dict())
    settings = TrainingSettings(epochs=1, batch_size=32, learning_rate=0.5)
    result = train_locally(
        model, _digits_client(), settings=settings, ledger=PrivacyLedger(delta=1e-5), seed=0
    )
    assert set(result.state_dict) == keys
    # evaluating twice must work (Opacus hooks removed; 'ew' mode would raise otherwise)
    splits = load_dataset("digits", seed=0)
    assert evaluate(model, splits.test) == evaluate(model, splits.test)


@pytest.mark.parametrize("mode", ["ew", "functorch", "ghost"])
def test_grad_sample_modes_compute_the_same_update_as_hooks(mode):
    dataset = _digits_client()
    results = {}
    for m in ("hooks", mode):
        torch.manual_seed(0)
        model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10)
        settings = TrainingSettings(
            epochs=1, batch_size=32, learning_rate=0.5, noise_multiplier=1.0, grad_sample_mode=m
        )
        results[m] = train_locally(
            model, dataset, settings=settings, ledger=PrivacyLedger(delta=1e-5), seed=7
        ).state_dict
    for k in results["hooks"]:
        torch.testing.assert_close(results[mode][k], results["hooks"][k], rtol=1e-4, atol=1e-5)


def test_non_private_training_learns_digits():
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10)
    settings = TrainingSettings(epochs=10, batch_size=32, learning_rate=0.5, dp=False)
    result = train_locally(model, _digits_client(), settings=settings, ledger=None, seed=0)
    _, accuracy = evaluate(model, load_dataset("digits", seed=0).test)
    assert accuracy > 0.9
    assert result.steps == 10 * 15  # 479 examples, batches of 32


def test_dp_training_without_a_ledger_is_refused():
    settings = TrainingSettings(epochs=1, batch_size=32, learning_rate=0.5)
    with pytest.raises(ValueError, match="needs a PrivacyLedger"):
        train_locally(
            build_model("mlp", input_shape=(1, 8, 8), num_classes=10),
            _digits_client(),
            settings=settings,
            ledger=None,
            seed=0,
        )
