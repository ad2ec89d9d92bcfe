"""A DataLoader's batches of a TensorDataset, indexed at once instead of example by example.

Why by hand: a ``DataLoader`` fetches a batch one ``dataset[i]`` at a time and stacks
the pieces (``default_collate``): an epoch of a digits client (144 examples, B = 64)
took 855 us shuffled and 614 us Poisson-sampled, against 76 and 95 us indexed; in a
profile of the digits job that fetching was 20% of a round without DP, 12% with it.
Indexing the dataset's tensors with the batch's indices gives the same tensors. The
indices are the loader's own (its batch sampler), and the one number its iterator draws
each epoch (a base seed for workers, from ``loader.generator`` or torch's global
generator) is drawn too, so every random stream is consumed exactly as by
``for batch in loader``
(``tests/fedmodel/training/test_tensor_batches.py`` checks batch for batch).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from opacus.data_loader import CollateFnWithEmpty
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data._utils.collate import default_collate


def is_plain_tensor_dataset(dataset: object) -> bool:
    """Whether ``dataset[i]`` is its tensors' row ``i`` (a ``TensorDataset`` whose
    subclass, if any, does not fetch examples its own way, e.g. with a transform)."""
    return (
        isinstance(dataset, TensorDataset)
        and type(dataset).__getitem__ is TensorDataset.__getitem__
    )


def batch_indices(loader: DataLoader) -> Iterator[list[int]]:
    """The index lists one pass over ``loader`` fetches, its random draws included."""
    if loader.batch_sampler is None:
        raise ValueError("the loader does not batch (batch_size=None)")
    # DataLoader's iterator draws its workers' base seed before the first batch.
    torch.empty((), dtype=torch.int64).random_(generator=loader.generator)
    for indices in loader.batch_sampler:
        yield list(indices)


def loader_batches(loader: DataLoader) -> Iterator[Any]:
    """What one pass over ``loader`` yields; a TensorDataset's batches by indexing.

    The fast path is taken for a single-process loader, without pinned memory, of a
    plain ``TensorDataset`` (:func:`is_plain_tensor_dataset`) collated by torch's
    ``default_collate`` (or Opacus's empty-batch
    wrapper of it); any other loader is iterated as it is.
    """
    dataset, collate = loader.dataset, loader.collate_fn
    if isinstance(collate, CollateFnWithEmpty) and collate.batch_first:
        # Opacus's wrapper gives an empty batch zero-length tensors of the dataset's
        # shapes and dtypes, as indexing with no indices does (unless it fills them).
        collate = None if collate.rand_on_empty else collate.wrapped_collator_fn
    if (
        not is_plain_tensor_dataset(dataset)
        or collate is not default_collate
        or loader.batch_sampler is None
        or loader.num_workers
        or loader.pin_memory
    ):
        yield from loader
        return
    tensors = dataset.tensors
    for indices in batch_indices(loader):
        index = torch.tensor(indices, dtype=torch.long)
        yield [tensor[index] for tensor in tensors]
