"""How many Poisson-sampled steps an epoch has, and at which rate: what the ledger records."""

from __future__ import annotations


def steps_per_epoch_for(num_examples: int, batch_size: int) -> int:
    """``ceil(N / B)``: Poisson-sampled steps per epoch for an expected batch size ``B``."""
    if num_examples < 1:
        raise ValueError("cannot train on an empty dataset")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    return -(-num_examples // batch_size)


def sample_rate_for(num_examples: int, batch_size: int) -> float:
    """Poisson sampling rate ``1 / ceil(N / B)`` (as Opacus) for an expected batch size."""
    return 1.0 / steps_per_epoch_for(num_examples, batch_size)
