"""Split a labelled dataset across clients: IID, Dirichlet label skew, label-sorted shards.

Every partitioner is a pure function of (labels, number of partitions, seed): a client
can compute its own share alone and every client gets the same split.

flwr-datasets has equivalent partitioners, but they operate on Hugging Face
``datasets`` objects (an extra dependency that is not otherwise needed); these work on a
plain label array and are a few lines each.

Run-config ``partitioner`` names one of :data:`PARTITIONERS`; a new partitioner is a
function of the :class:`Partitioner` signature plus one ``register`` line at the end.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from fedmodel.registry import Registry


class Partitioner(Protocol):
    """Index arrays of ``num_partitions`` client shares of examples with ``labels``.

    Every partitioner gets every run-config partitioner option and uses its own.
    """

    def __call__(
        self,
        labels: np.ndarray,
        *,
        num_partitions: int,
        seed: int,
        dirichlet_alpha: float,
        shards_per_client: int,
    ) -> list[np.ndarray]: ...


def iid_partitions(num_examples: int, *, num_partitions: int, seed: int) -> list[np.ndarray]:
    """Shuffle, then cut into ``num_partitions`` near-equal parts."""
    _check_counts(num_examples, num_partitions)
    order = np.random.default_rng(seed).permutation(num_examples)
    return [np.sort(part) for part in np.array_split(order, num_partitions)]


def dirichlet_partitions(
    labels: np.ndarray,
    *,
    num_partitions: int,
    alpha: float,
    seed: int,
    min_partition_size: int = 2,
    max_attempts: int = 100,
) -> list[np.ndarray]:
    """Label skew: each class is spread over clients by proportions drawn from Dir(alpha).

    Small ``alpha`` gives clients few classes; large ``alpha`` approaches IID
    (Hsu et al. 2019, "Measuring the Effects of Non-Identical Data Distribution for
    Federated Visual Classification", https://arxiv.org/abs/1909.06335). Draws are
    repeated until every partition holds at least ``min_partition_size`` examples.
    """
    labels = np.asarray(labels)
    _check_counts(len(labels), num_partitions)
    if alpha <= 0:
        raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_attempts):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
        for label in classes:
            idx = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].append(chunk)
        merged = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in merged) >= min_partition_size:
            return merged
    raise ValueError(
        f"dirichlet partitioning with alpha={alpha} could not give each of {num_partitions} "
        f"partitions at least {min_partition_size} examples in {max_attempts} draws; "
        "use fewer partitions or a larger alpha"
    )


def shard_partitions(
    labels: np.ndarray, *, num_partitions: int, shards_per_client: int, seed: int
) -> list[np.ndarray]:
    """Pathological non-IID split of the FedAvg paper (McMahan et al. 2017, Sec. 3).

    Sort by label, cut into ``num_partitions * shards_per_client`` equal shards and give
    each client ``shards_per_client`` of them at random, so most clients see only that
    many classes.
    """
    labels = np.asarray(labels)
    num_shards = num_partitions * shards_per_client
    _check_counts(len(labels), num_shards)
    rng = np.random.default_rng(seed)
    by_label = np.argsort(labels, kind="stable")
    shards = np.array_split(by_label, num_shards)
    assignment = rng.permutation(num_shards).reshape(num_partitions, shards_per_client)
    return [np.sort(np.concatenate([shards[s] for s in row])) for row in assignment]


def partition(
    labels: np.ndarray,
    *,
    partitioner: str,
    num_partitions: int,
    seed: int,
    dirichlet_alpha: float = 0.5,
    shards_per_client: int = 2,
) -> list[np.ndarray]:
    """Index arrays of all ``num_partitions`` partitions for the named partitioner."""
    return PARTITIONERS.get(partitioner)(
        labels,
        num_partitions=num_partitions,
        seed=seed,
        dirichlet_alpha=dirichlet_alpha,
        shards_per_client=shards_per_client,
    )


def _check_counts(num_examples: int, num_parts: int) -> None:
    if num_parts < 1:
        raise ValueError(f"number of partitions must be >= 1, got {num_parts}")
    if num_examples < num_parts:
        raise ValueError(
            f"cannot split {num_examples} examples into {num_parts} non-empty parts"
        )


# The registered partitioners: the functions above, each taking the options it uses.
def _iid(labels: np.ndarray, *, num_partitions: int, seed: int, **_: object) -> list[np.ndarray]:
    return iid_partitions(len(labels), num_partitions=num_partitions, seed=seed)


def _dirichlet(
    labels: np.ndarray, *, num_partitions: int, seed: int, dirichlet_alpha: float, **_: object
) -> list[np.ndarray]:
    return dirichlet_partitions(
        labels, num_partitions=num_partitions, alpha=dirichlet_alpha, seed=seed
    )


def _shards(
    labels: np.ndarray, *, num_partitions: int, seed: int, shards_per_client: int, **_: object
) -> list[np.ndarray]:
    return shard_partitions(
        labels, num_partitions=num_partitions, shards_per_client=shards_per_client, seed=seed
    )


PARTITIONERS: Registry[Partitioner] = Registry("partitioner")
PARTITIONERS.register("iid", _iid)
PARTITIONERS.register("dirichlet", _dirichlet)
PARTITIONERS.register("shards", _shards)
