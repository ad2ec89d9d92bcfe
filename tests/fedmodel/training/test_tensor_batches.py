"""fedmodel.training.tensor_batches: a DataLoader's batches, and its random draws, exactly."""

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from fedmodel.training.poisson_sampling import poisson_loader
from fedmodel.training.tensor_batches import batch_indices, loader_batches


def _dataset(n: int = 37) -> TensorDataset:
    x = torch.arange(n * 6, dtype=torch.float32).reshape(n, 2, 3)
    return TensorDataset(x, torch.arange(n) % 5)


def _shuffled(seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(_dataset(), batch_size=8, shuffle=True, generator=generator)


def _poisson(seed: int, n: int = 37, batch_size: int = 8) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return poisson_loader(
        _dataset(n),
        batch_size=batch_size,
        bernoulli=lambda k, p: torch.rand(k, generator=generator) < p,
    )


def _same_batches(ours, theirs) -> None:
    ours, theirs = list(ours), list(theirs)
    assert len(ours) == len(theirs)
    for mine, torch_s in zip(ours, theirs, strict=True):
        assert len(mine) == len(torch_s)
        for a, b in zip(mine, torch_s, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("make", [_shuffled, _poisson])
def test_batches_and_random_streams_equal_the_dataloaders_over_epochs(make):
    loader = make(3)
    torch.manual_seed(5)
    expected = [list(loader) for _ in range(3)]  # three epochs of one loader
    after_expected = torch.rand(3)
    loader = make(3)
    torch.manual_seed(5)
    got = [list(loader_batches(loader)) for _ in range(3)]
    after_got = torch.rand(3)
    for mine, theirs in zip(got, expected, strict=True):
        _same_batches(mine, theirs)
    assert torch.equal(after_got, after_expected)  # the global RNG consumed alike


def test_empty_poisson_batches_have_the_datasets_shapes_and_dtypes():
    # 3 examples, batch size 1: rate 1/3 per step, so some of the 30 steps are empty
    expected = list(_poisson(0, n=3, batch_size=1))
    got = list(loader_batches(_poisson(0, n=3, batch_size=1)))
    assert any(len(y) == 0 for _, y in expected)
    _same_batches(got, expected)


def test_sequential_loader_and_indices():
    loader = DataLoader(_dataset(), batch_size=10)
    _same_batches(loader_batches(loader), loader)
    assert list(batch_indices(loader)) == [list(range(i, min(i + 10, 37))) for i in (0, 10, 20, 30)]


class _Plain(Dataset):
    def __len__(self) -> int:
        return 5

    def __getitem__(self, i: int):
        return torch.full((2,), float(i)), i


def test_other_loaders_are_iterated_as_they_are():
    loader = DataLoader(_Plain(), batch_size=2)
    _same_batches(loader_batches(loader), loader)
    custom = DataLoader(_dataset(), batch_size=4, collate_fn=lambda b: [b[0][0][None], b[0][1]])
    got = list(loader_batches(custom))
    assert [tuple(x.shape) for x, _ in got] == [(1, 2, 3)] * 10


def test_a_loader_that_does_not_batch_is_refused():
    with pytest.raises(ValueError, match="does not batch"):
        list(batch_indices(DataLoader(_dataset(), batch_size=None)))


class _Doubled(TensorDataset):
    """A TensorDataset subclass that fetches its examples its own way."""

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return 2 * x, y


def test_a_subclass_with_its_own_fetching_is_iterated_as_it_is():
    from fedmodel.training.batched_training import _tensors
    from fedmodel.training.tensor_batches import is_plain_tensor_dataset

    plain = _dataset()
    doubled = _Doubled(*plain.tensors)
    assert is_plain_tensor_dataset(plain) and not is_plain_tensor_dataset(doubled)
    loader = DataLoader(doubled, batch_size=8)
    _same_batches(loader_batches(loader), loader)
    assert torch.equal(next(iter(loader_batches(loader)))[0], 2 * plain.tensors[0][:8])
    x, y = _tensors(doubled)  # the batched engine reads examples as the loader would
    assert torch.equal(x, 2 * plain.tensors[0]) and torch.equal(y, plain.tensors[1])
