"""The one rule on δ: below 1 / N of every dataset it protects."""

from __future__ import annotations

from fedmodel.config import ConfigError


def check_delta(delta: float, *, num_examples: int, where: str) -> None:
    """Refuse ``delta >= 1 / num_examples``: such a δ permits leaking a whole record.

    ``where`` names the dataset (a client, a file, "the smallest client") in the error.
    """
    if num_examples < 1:
        raise ConfigError(f"{where}: no records, so no δ can protect them")
    if delta >= 1.0 / num_examples:
        raise ConfigError(
            f"run-config key 'delta' = {delta:g} is out of range for {where}: must be below "
            f"1/{num_examples} = {1.0 / num_examples:.3g} (1 / its number of records); a "
            "larger δ permits leaking a whole record"
        )
