"""Augmentation, mixup and augmentation multiplicity in local training."""

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedmodel.config import ConfigError, RunConfig
from fedmodel.privacy import PrivacyLedger
from fedmodel.training import TrainingSettings, train_locally
from fedmodel.training.augmentation import AugmentationSettings, BatchAugmenter


def _images(n=6, side=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, side, side, generator=g), torch.arange(n) % 3


def _model(side=6):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(side * side, 3))


@pytest.mark.parametrize("name", ["crop", "crop-flip", "shift"])
def test_augmentation_is_a_per_example_translation_seeded_by_the_training_seed(name):
    x, _ = _images(n=32, side=28)
    settings = AugmentationSettings(augmentation=name)
    a = BatchAugmenter(settings, seed=7).augment(x)
    assert a.shape == x.shape
    torch.testing.assert_close(a, BatchAugmenter(settings, seed=7).augment(x))
    assert not torch.equal(a, BatchAugmenter(settings, seed=8).augment(x))
    reach = 2 if name == "shift" else 4
    padded = nn.functional.pad(x, (reach,) * 4)
    for i in range(len(x)):  # each output is its own example, shifted (and maybe flipped)
        crops = [
            padded[i, :, dy : dy + 28, dx : dx + 28]
            for dy in range(2 * reach + 1)
            for dx in range(2 * reach + 1)
        ]
        crops += [c.flip(-1) for c in crops] if name == "crop-flip" else []
        assert any(torch.equal(a[i], c) for c in crops)


def test_augmentation_of_non_image_data_is_a_clear_error():
    augmenter = BatchAugmenter(AugmentationSettings(augmentation="crop"), seed=0)
    with pytest.raises(ValueError, match="needs image examples .* got examples of shape \\(10,\\)"):
        augmenter.augment(torch.zeros(4, 10))


def test_mixup_under_dp_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="'mixup-alpha' = 0.2 .* 0 with dp = true: mixup blends"):
        RunConfig(mixup_alpha=0.2)
    with pytest.raises(ValueError, match="record-level per-example sensitivity"):
        TrainingSettings(epochs=1, batch_size=4, learning_rate=0.1, dp=True, mixup_alpha=0.2)
    assert RunConfig(mixup_alpha=0.2, dp=False).mixup_alpha == 0.2


def test_mixup_without_dp_trains_reproducibly():
    x, y = _images()
    settings = TrainingSettings(
        epochs=2,
        batch_size=3,
        learning_rate=0.1,
        dp=False,
        mixup_alpha=0.4,
        augmentation="shift",
    )
    runs = [
        train_locally(_model(), TensorDataset(x, y), settings=settings, ledger=None, seed=3)
        for _ in range(2)
    ]
    plain = train_locally(
        _model(),
        TensorDataset(x, y),
        ledger=None,
        seed=3,
        settings=TrainingSettings(epochs=2, batch_size=3, learning_rate=0.1, dp=False),
    )
    for k, v in runs[0].state_dict.items():
        torch.testing.assert_close(v, runs[1].state_dict[k])
    assert not torch.equal(runs[0].state_dict["1.weight"], plain.state_dict["1.weight"])


def test_multiplicity_needs_an_augmentation():
    with pytest.raises(
        ConfigError, match="'augmentation-multiplicity' = 4 .* augmentation = 'none'"
    ):
        RunConfig(augmentation_multiplicity=4)


def _one_step(*, multiplicity, mode="hooks", lr=0.1, clip=0.05, seed=5):
    x, y = _images()
    ledger = PrivacyLedger(delta=1e-5)
    settings = TrainingSettings(
        epochs=1,
        batch_size=len(x),
        learning_rate=lr,
        noise_multiplier=0.0,
        max_grad_norm=clip,
        augmentation="crop",
        augmentation_multiplicity=multiplicity,
        grad_sample_mode=mode,
    )
    result = train_locally(
        _model(), TensorDataset(x, y), settings=settings, ledger=ledger, seed=seed
    )
    return result, ledger


def test_multiplicity_clips_each_examples_average_over_its_copies():
    """De et al. 2022 on one step (noise 0, q = 1): per example, the mean gradient of its
    K copies is clipped to C; never each copy on its own."""
    k, lr, clip, seed = 4, 0.1, 0.05, 5
    x, y = _images()
    result, _ = _one_step(multiplicity=k, lr=lr, clip=clip, seed=seed)
    # The same copies, drawn again from the same seed (BatchAugmenter's own stream).
    copies = BatchAugmenter(AugmentationSettings(augmentation="crop"), seed=seed).augment(
        x.repeat_interleave(k, dim=0)
    )
    start = _model().state_dict()
    per_example, per_copy = [], []
    for i in range(len(x)):
        reference = _model()
        grads = []
        for j in range(k):
            reference.zero_grad()
            nn.functional.cross_entropy(
                reference(copies[i * k + j : i * k + j + 1]), y[i : i + 1]
            ).backward()
            grads.append(torch.cat([p.grad.flatten() for p in reference.parameters()]))
        mean = torch.stack(grads).mean(0)
        per_example.append(mean * min(1.0, clip / float(mean.norm())))
        per_copy.append(sum(g * min(1.0, clip / float(g.norm())) for g in grads) / k)
    assert all(float(g.norm()) <= clip * (1 + 1e-6) for g in per_example)
    update = torch.cat([(result.state_dict[n] - start[n]).flatten() for n in start])
    expected = -lr * torch.stack(per_example).sum(0) / len(x)
    torch.testing.assert_close(update, expected, rtol=1e-4, atol=1e-7)
    # The test can tell: clipping copy by copy gives another update.
    assert not torch.allclose(update, -lr * torch.stack(per_copy).sum(0) / len(x), rtol=1e-3)


def test_multiplicity_leaves_the_ledger_unchanged():
    _, once = _one_step(multiplicity=1, mode="ghost")  # ghost clipping of augmented batches
    _, four = _one_step(multiplicity=4, mode="ghost")
    assert four.history == once.history == [(0.0, 1.0, 1)]


@pytest.mark.parametrize("mode", ["ghost", "functorch"])
def test_other_modes_clip_the_same_averages_as_hooks(mode):
    # ghost falls back to hooks (it only sees per-copy norms); functorch averages itself.
    other, _ = _one_step(multiplicity=2, mode=mode)
    hooks, _ = _one_step(multiplicity=2, mode="hooks")
    for name, value in other.state_dict.items():
        torch.testing.assert_close(value, hooks.state_dict[name])


def test_a_mode_that_cannot_average_copies_is_refused():
    with pytest.raises(
        ValueError, match="needs grad-sample-mode 'hooks' or 'functorch' or 'ghost', got 'ew'"
    ):
        _one_step(multiplicity=2, mode="ew")
    with pytest.raises(
        ConfigError, match="'augmentation-multiplicity' = 2 .* grad-sample-mode = 'ew'"
    ):
        RunConfig(augmentation="crop", augmentation_multiplicity=2, grad_sample_mode="ew")


def test_augmenting_non_image_data_is_refused_before_round_1(tmp_path):
    from simulations import simulate

    run_dir = tmp_path / "run"
    config = {"dataset": "synthetic", "augmentation": "crop", "run-dir": str(run_dir)}
    with pytest.raises(ConfigError, match="'augmentation' = 'crop' needs image examples"):
        simulate(config, num_clients=2)
    assert not run_dir.exists()
