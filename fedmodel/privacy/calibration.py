"""Noise calibration: the noise multiplier that spends a target ε over planned steps."""

from __future__ import annotations

import functools

from opacus.accountants.utils import get_noise_multiplier


@functools.lru_cache(maxsize=1024)
def noise_for_target_epsilon(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """Smallest noise multiplier (to Opacus's tolerance) with ε <= target after ``steps``.

    Called once per client, for the whole run's planned steps; the result is kept and
    never recomputed per round, so the target holds for the run as a whole. Cached:
    Opacus's search takes 1-5 s, and clients of equal size share the answer.
    """
    if target_epsilon <= 0:
        raise ValueError(f"target epsilon must be > 0, got {target_epsilon}")
    if steps < 1:
        raise ValueError(f"planned steps must be >= 1, got {steps}")
    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
        )
    )
