"""Secure randomness: the server cannot regenerate a node's noise or its batches."""

import torch
from torch.utils.data import TensorDataset

from fedmodel.models import build_model
from fedmodel.privacy import PrivacyLedger
from fedmodel.privacy.secure_randomness import SecureRandomness
from fedmodel.training import TrainingSettings, train_locally
from fedmodel.training.poisson_sampling import PoissonBatchSampler

DATA = TensorDataset(torch.randn(64, 8, generator=torch.Generator().manual_seed(0)),
                     torch.arange(64) % 3)


def _update(noise_multiplier: float, noise_source: str, *, seed: int = 7) -> torch.Tensor:
    """Flattened weights after one DP-SGD step over all 64 records (q = 1: no sampling)."""
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=(8,), num_classes=3, hidden_sizes=(16,))
    settings = TrainingSettings(
        epochs=1, batch_size=64, learning_rate=1.0, noise_multiplier=noise_multiplier,
        max_grad_norm=1.0,
    )
    result = train_locally(
        model, DATA, settings=settings, ledger=PrivacyLedger(delta=1e-5), seed=seed,
        noise_source=noise_source,
    )
    return torch.cat([v.flatten() for v in result.state_dict.values()])


def test_secure_noise_is_fresh_and_unrelated_to_the_noise_the_seed_regenerates():
    clean = _update(0.0, "seeded")
    seeded = [_update(5.0, "seeded") - clean for _ in range(2)]
    secure = [_update(5.0, "secure") - clean for _ in range(2)]
    assert torch.equal(seeded[0], seeded[1])  # a simulation reproduces bit for bit
    assert not torch.equal(secure[0], secure[1])  # same seed, different noise
    for noise in secure:
        # What the server would regenerate from the seed says nothing about the real noise.
        # Independent noise: |correlation| ~ 1 / sqrt(n) (n = 195 here, so 0.07); regenerated
        # noise would give 1. Five standard deviations: a false alarm about once in 10^6.
        correlation = torch.corrcoef(torch.stack([noise, seeded[0]]))[0, 1]
        assert abs(float(correlation)) < 5 / noise.numel() ** 0.5
        assert noise.std() > 0.5 * seeded[0].std()  # and it is noise of the same size


def test_secure_batches_differ_from_run_to_run_and_seeded_ones_repeat():
    def batches(bernoulli):
        sampler = PoissonBatchSampler(
            num_examples=1000, steps=10, sample_rate=0.1, bernoulli=bernoulli
        )
        return list(sampler)

    def seeded(seed):
        generator = torch.Generator().manual_seed(seed)
        return lambda n, p: torch.rand(n, generator=generator) < p

    assert batches(seeded(3)) == batches(seeded(3))
    first, second = batches(SecureRandomness().bernoulli), batches(SecureRandomness().bernoulli)
    assert first != second and first != batches(seeded(3))
    assert len(first) == 10 and 50 < sum(map(len, first)) / 10 < 150  # about q * N per batch
