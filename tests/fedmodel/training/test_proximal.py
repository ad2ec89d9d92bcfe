"""FedProx's proximal term in local training (Li et al. 2020, MLSys)."""

from __future__ import annotations

import pytest
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, Dataset

import fedmodel.training.local_training as local_training
from fedmodel.config import RunConfig
from fedmodel.data import load_partition
from fedmodel.models import build_model
from fedmodel.privacy import PrivacyLedger
from fedmodel.training import TrainingSettings, sample_rate_for, train_locally
from fedmodel.training.poisson_sampling import poisson_loader

SEED = 7
# The written-out reference trains with Opacus as train_locally does, which hides these.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
]


@pytest.fixture(scope="module")
def client_data() -> Dataset:
    return load_partition(RunConfig(), partition_id=0, num_partitions=5)


def _global_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("mlp", input_shape=(1, 8, 8), num_classes=10)


def _settings(*, dp: bool, mu: float) -> TrainingSettings:
    return TrainingSettings(
        epochs=2,
        batch_size=32,
        learning_rate=0.5,
        momentum=0.5,
        dp=dp,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        proximal_mu=mu,
    )


def _train(dataset: Dataset, settings: TrainingSettings) -> dict[str, torch.Tensor]:
    ledger = PrivacyLedger(delta=1e-5) if settings.dp else None
    result = train_locally(_global_model(), dataset, settings=settings, ledger=ledger, seed=SEED)
    return result.state_dict


def _distance(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum(((state[k] - reference[k]) ** 2).sum() for k in reference)))


def _reference_training(
    dataset: Dataset, settings: TrainingSettings, *, mu: float
) -> dict[str, torch.Tensor]:
    """``train_locally`` before FedProx, written out, plus the proximal step by hand."""
    model = _global_model()
    anchor = {name: p.detach().clone() for name, p in model.named_parameters()}
    n = len(dataset)  # type: ignore[arg-type]
    expected_batch = sample_rate_for(n, settings.batch_size) * n
    generator = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=settings.learning_rate, momentum=settings.momentum
    )
    criterion: nn.Module = nn.CrossEntropyLoss(reduction="sum")
    trained: nn.Module = model
    if settings.dp:
        loader = poisson_loader(
            dataset,
            batch_size=settings.batch_size,
            bernoulli=lambda k, p: torch.rand(k, generator=generator) < p,
        )
        ledger = PrivacyLedger(delta=1e-5)
        engine = PrivacyEngine(accountant=ledger.accountant_name)
        engine.accountant = ledger.accountant
        trained, optimizer, criterion, loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            criterion=criterion,
            data_loader=loader,
            noise_multiplier=settings.noise_multiplier,
            max_grad_norm=settings.max_grad_norm / expected_batch,
            loss_reduction="sum",
            poisson_sampling=False,
            grad_sample_mode="ghost",
            noise_generator=torch.Generator().manual_seed(SEED + 1),
        )
    else:
        loader = DataLoader(
            dataset, batch_size=settings.batch_size, shuffle=True, generator=generator
        )
    trained.train()
    for _ in range(settings.epochs):
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            (criterion(trained(x), y) / expected_batch).backward()
            optimizer.step()
            if mu > 0:
                with torch.no_grad():
                    for name, p in model.named_parameters():
                        p -= settings.learning_rate * mu * (p - anchor[name])
    if settings.dp:
        trained._close()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("dp", [True, False], ids=["dp", "no-dp"])
def test_mu_pulls_the_weights_towards_the_global_model(client_data, dp):
    start = _global_model().state_dict()
    free = _train(client_data, _settings(dp=dp, mu=0.0))
    pulled = _train(client_data, _settings(dp=dp, mu=0.5))
    stronger = _train(client_data, _settings(dp=dp, mu=1.0))
    # Same seed, same (seeded) noise and batches: only the proximal term differs.
    assert _distance(stronger, start) < _distance(pulled, start) < 0.8 * _distance(free, start)


@pytest.mark.parametrize("dp", [True, False], ids=["dp", "no-dp"])
def test_mu_zero_is_bit_identical_to_training_without_fedprox(client_data, dp, monkeypatch):
    def no_proximal_step(*args, **kwargs):
        raise AssertionError("the proximal step ran with mu = 0")

    monkeypatch.setattr(local_training, "_proximal_step", no_proximal_step)
    trained = _train(client_data, _settings(dp=dp, mu=0.0))
    reference = _reference_training(client_data, _settings(dp=dp, mu=0.0), mu=0.0)
    without_mu = {k: v for k, v in _settings(dp=dp, mu=0.0).__dict__.items() if k != "proximal_mu"}
    assert TrainingSettings(**without_mu) == _settings(dp=dp, mu=0.0)  # 0 is the default
    for key, value in reference.items():
        assert torch.equal(trained[key], value), key


@pytest.mark.parametrize("dp", [True, False], ids=["dp", "no-dp"])
def test_the_proximal_step_is_w_minus_lr_mu_times_w_minus_global(client_data, dp):
    trained = _train(client_data, _settings(dp=dp, mu=0.3))
    reference = _reference_training(client_data, _settings(dp=dp, mu=0.3), mu=0.3)
    for key, value in reference.items():
        torch.testing.assert_close(trained[key], value, rtol=1e-5, atol=1e-6)


def test_the_privacy_accounting_does_not_change_with_mu(client_data):
    ledgers = []
    for mu in (0.0, 0.5):
        ledger = PrivacyLedger(delta=1e-5)
        settings = _settings(dp=True, mu=mu)
        train_locally(_global_model(), client_data, settings=settings, ledger=ledger, seed=SEED)
        ledgers.append((ledger.history, ledger.epsilon()))
    assert ledgers[0] == ledgers[1]


@pytest.mark.parametrize("mu", [-0.1, float("nan")])
def test_negative_or_nan_mu_is_refused(mu):
    with pytest.raises(ValueError, match="proximal_mu must be >= 0"):
        TrainingSettings(epochs=1, batch_size=8, learning_rate=0.1, proximal_mu=mu)


def test_a_proximal_step_that_would_reach_the_global_model_is_refused():
    with pytest.raises(ValueError, match="learning_rate \\* proximal_mu must be < 1"):
        TrainingSettings(epochs=1, batch_size=8, learning_rate=0.5, proximal_mu=2.0)
