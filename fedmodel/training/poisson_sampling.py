"""Poisson-sampled batches whose count and rate are the ones the accountant records.

DP-SGD's amplification by subsampling assumes each record joins each batch
independently with probability q, and that nobody who sees the updates knows the
draws. Opacus's ``DPDataLoader`` does the first, but takes ``int(1 / q)`` steps per
epoch, which for about 8% of dataset sizes is ``ceil(N / B) - 1`` (``1 / (1 / 93)`` is
92.99...), so a plan of ``ceil(N / B)`` steps at ``q = 1 / ceil(N / B)`` and the steps
taken differ; and it draws from a torch generator, which only a seed can make secret.
This sampler fixes both: exactly ``steps_per_epoch`` batches at exactly ``sample_rate``
per epoch, from the Bernoulli source it is given (seeded or secure).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from opacus.data_loader import dtype_safe, shape_safe, wrap_collate_with_empty
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data._utils.collate import default_collate

from fedmodel.privacy.sampling_plan import steps_per_epoch_for

BernoulliDraw = Callable[[int, float], torch.Tensor]


class PoissonBatchSampler(Sampler[list[int]]):
    """``steps`` batches per epoch; each record joins each batch with ``sample_rate``.

    Parameters
    ----------
    num_examples : int
        Records in the dataset.
    steps : int
        Batches per pass (an epoch).
    sample_rate : float
        Probability that a record is in a batch.
    bernoulli : callable
        ``bernoulli(n, p)`` returns ``n`` independent Bernoulli(p) draws as a bool tensor.
    """

    def __init__(
        self, *, num_examples: int, steps: int, sample_rate: float, bernoulli: BernoulliDraw
    ) -> None:
        if num_examples < 1 or steps < 1 or not 0 < sample_rate <= 1:
            raise ValueError(
                f"need num_examples >= 1, steps >= 1, 0 < sample_rate <= 1; got "
                f"{num_examples}, {steps}, {sample_rate}"
            )
        self.num_examples = num_examples
        self.steps = steps
        self.sample_rate = sample_rate
        self.bernoulli = bernoulli

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            mask = self.bernoulli(self.num_examples, self.sample_rate)
            yield mask.nonzero(as_tuple=False).reshape(-1).tolist()


def poisson_loader(dataset: Dataset, *, batch_size: int, bernoulli: BernoulliDraw) -> DataLoader:
    """A DataLoader of Poisson batches (``ceil(N / B)`` per epoch, rate ``1 / ceil(N / B)``).

    Empty batches come out as zero-length tensors of the right shape, as from Opacus's
    ``DPDataLoader`` (its collate wrapper is reused).
    """
    num_examples = len(dataset)  # type: ignore[arg-type]
    steps = steps_per_epoch_for(num_examples, batch_size)
    first = dataset[0]
    sampler = PoissonBatchSampler(
        num_examples=num_examples, steps=steps, sample_rate=1.0 / steps, bernoulli=bernoulli
    )
    collate = wrap_collate_with_empty(
        collate_fn=default_collate,
        sample_empty_shapes=[(0, *shape_safe(x)) for x in first],
        dtypes=[dtype_safe(x) for x in first],
    )
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)
