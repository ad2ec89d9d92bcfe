"""A strategy wrapper that draws each round's cohort itself: Poisson, or a fixed size.

Flower's ``FedAvg.configure_train`` samples a fixed-size cohort with ``random.sample``
(the global, seeded generator). Amplification by sampling (Mironov, Talwar & Zhang 2019,
"Rényi Differential Privacy of the Sampled Gaussian Mechanism") assumes Poisson
sampling, each client joining independently with probability ``q``, drawn from
randomness nobody else can predict. Flower offers no Poisson ``configure_train``, so
this wrapper draws the cohort: it asks the wrapped strategy to configure every node
(the strategy is built with ``fraction_train = 1``, so its own messages, e.g. FedProx's
``proximal-mu``, stay as they are) and keeps the sampled nodes' messages.

The draw uses the operating system's generator (``random.SystemRandom``): a cohort the
run's public ``seed`` cannot reproduce, so the amplification holds against anyone who
knows the run config; the price is that a run's cohorts are not reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from server.strategies.delegating import DelegatingStrategy

SAMPLINGS = ("fixed", "poisson")


class CohortSampling(DelegatingStrategy):
    """Send training to a cohort drawn here; everything else is the wrapped strategy's.

    Parameters
    ----------
    strategy : Strategy
        A strategy that configures every node each round (``fraction_train = 1``).
    sampling : str
        ``"poisson"``: each node joins with probability ``sample_rate``;
        ``"fixed"``: exactly ``cohort_size`` nodes, without replacement.
    sample_rate : float
        ``q`` for Poisson sampling.
    cohort_size : int
        ``m`` for fixed-size sampling.
    population : int, optional
        ``N``, the nodes the accounting assumes (fixed-size sampling): when fewer are
        connected in a round, the cohort shrinks to ``floor(m * connected / N)`` so that
        no node's chance to be sampled exceeds the accounted ``m / N``.
    rng : random.Random, optional
        The generator (default: ``random.SystemRandom()``; tests pass a seeded one).
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        sampling: str,
        sample_rate: float = 1.0,
        cohort_size: int = 1,
        population: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if cohort_size < 1:
            raise ValueError(f"cohort_size must be >= 1, got {cohort_size}")
        if getattr(strategy, "fraction_train", 1.0) != 1.0:
            raise ValueError("the wrapped strategy must configure every node (fraction_train 1)")
        self.strategy = strategy
        self.sampling = sampling
        self.sample_rate = sample_rate
        self.cohort_size = cohort_size
        self.population = population
        self._rng = _Shared(rng if rng is not None else random.SystemRandom())
        self.last_cohort: list[int] = []
        # What the wrapping layers read of a FedAvg (e.g. ClientTracking's weight key).
        self.weighted_by_key = getattr(strategy, "weighted_by_key", "num-examples")

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        every = list(self.strategy.configure_train(server_round, arrays, config, grid))
        rng = self._rng.value
        if self.sampling == "poisson":
            kept = [m for m in every if rng.random() < self.sample_rate]
        else:
            size = min(self.cohort_size, len(every))
            if self.population and len(every) < self.population:
                size = self.cohort_size * len(every) // self.population
            kept = rng.sample(every, size)
        self.last_cohort = sorted(m.metadata.dst_node_id for m in kept)
        log(
            INFO,
            "configure_train: %s sampling kept %s of %s nodes",
            self.sampling,
            len(kept),
            len(every),
        )
        return kept


class _Shared:
    """Holds a value that copies of the strategy share.

    ``ClientTracking`` deep-copies its strategy's state each round (to restore it after an
    unfit aggregate); ``random.SystemRandom`` cannot be copied, and has no state to restore.
    """

    def __init__(self, value: random.Random) -> None:
        self.value = value

    def __deepcopy__(self, memo: dict[int, object]) -> _Shared:
        return self
