import numpy as np
import pytest

from fedmodel.data.partitioning import (
    PARTITIONERS,
    dirichlet_partitions,
    iid_partitions,
    partition,
    shard_partitions,
)

LABELS = np.repeat(np.arange(10), 100)  # 1,000 examples, 10 classes


def _is_exact_cover(parts, n):
    joined = np.concatenate(parts)
    return len(joined) == n and len(np.unique(joined)) == n


def test_the_registered_partitioners():
    assert PARTITIONERS.names() == ("iid", "dirichlet", "shards")


@pytest.mark.parametrize("name", PARTITIONERS.names())
def test_partitioners_are_deterministic_disjoint_and_complete(name):
    first = partition(LABELS, partitioner=name, num_partitions=10, seed=3)
    again = partition(LABELS, partitioner=name, num_partitions=10, seed=3)
    other = partition(LABELS, partitioner=name, num_partitions=10, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    assert _is_exact_cover(first, len(LABELS))


def test_iid_sizes_differ_by_at_most_one():
    sizes = [len(p) for p in iid_partitions(1003, num_partitions=10, seed=0)]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_small_alpha_skews_labels_large_alpha_does_not():
    def mean_classes(alpha):
        parts = dirichlet_partitions(LABELS, num_partitions=10, alpha=alpha, seed=0)
        return np.mean([len(np.unique(LABELS[p])) for p in parts])

    assert mean_classes(0.05) < 4 < 9 < mean_classes(100.0)


def test_shards_give_each_client_at_most_k_classes():
    parts = shard_partitions(LABELS, num_partitions=20, shards_per_client=2, seed=0)
    assert all(len(np.unique(LABELS[p])) <= 2 for p in parts)
    assert all(len(p) == 50 for p in parts)


def test_too_many_partitions_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot split 5 examples into 6 non-empty parts"):
        iid_partitions(5, num_partitions=6, seed=0)


def test_partition_passes_each_partitioner_its_options():
    assert all(
        np.array_equal(a, b)
        for a, b in zip(
            partition(LABELS, partitioner="dirichlet", num_partitions=5, seed=1,
                      dirichlet_alpha=0.1),
            dirichlet_partitions(LABELS, num_partitions=5, alpha=0.1, seed=1),
            strict=True,
        )
    )
    shards = partition(LABELS, partitioner="shards", num_partitions=20, seed=0,
                       shards_per_client=1)
    assert all(len(np.unique(LABELS[p])) == 1 for p in shards)


def test_unknown_partitioner_is_a_clear_error():
    with pytest.raises(
        ValueError, match="unknown partitioner 'skewed': must be one of iid, dirichlet, shards"
    ):
        partition(LABELS, partitioner="skewed", num_partitions=2, seed=0)
