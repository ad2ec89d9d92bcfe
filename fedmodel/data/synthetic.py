"""Synthetic(alpha, beta): the federated benchmark of the FedProx paper, any number of clients.

Li et al. 2020, "Federated Optimization in Heterogeneous Networks" (FedProx),
https://arxiv.org/abs/1812.06127, Sec. 5.1; generator as in their code and in LEAF
(Caldas et al. 2018, https://arxiv.org/abs/1812.01097, ``data/synthetic``). Client ``k``:

- size ``n_k = floor(lognormal(4, 2)) + 50`` (a power law: most clients hold ~100
  examples, a few hold thousands);
- ``u_k ~ N(0, alpha)``, ``B_k ~ N(0, beta)`` (``alpha`` and ``beta`` used as standard
  deviations, as in the reference code), ``v_k ~ N(B_k, 1)`` in 60 dimensions;
- its own softmax model ``W_k ~ N(u_k, 1)`` (60 x 10), ``b_k ~ N(u_k, 1)``;
- ``x ~ N(v_k, diag(j^-1.2))``, label ``y = argmax(x W_k + b_k)``.

``alpha`` sets how much the clients' models differ, ``beta`` how much their inputs do.
Every client has its own labelling model, so a model can only learn the clients it
has seen: there is no population-wide rule to generalise to new clients.

Every client is generated on its own from ``(seed, k)``, independently of the number of
clients, so a federation of 10,000 clients never has to exist in memory at once: a
client's data is made when the client asks for it (a small LRU cache keeps the most
recent ones), and :func:`client_sizes` needs no data at all.

Central test set (:func:`load_synthetic_splits`): as in FedProx, where each device keeps
a share of its data for testing, it is held-out data of the federation's own clients:
further draws from the distributions of (up to) 1,000 of them, spread evenly over the
client ids, 10,000 examples in all, equally many per client (so the accuracy is that
of a typical client, not dominated by the few largest). Clients train on all of their
``n_k`` examples; the held-out draws are extra. The same function gives an equally
drawn central training sample for centralised baselines; clients never use it.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from torch.utils.data import TensorDataset

from fedmodel.data.splits import DatasetSplits, tensor_dataset

NUM_FEATURES = 60
NUM_CLASSES = 10
MIN_CLIENT_SIZE = 50
CENTRAL_CLIENTS = 1_000
CENTRAL_EXAMPLES = 10_000

# Independent seed streams per client: size, model and input mean, training examples,
# held-out examples for the central test set and for the central training sample.
_SIZE, _PARAMS, _TRAIN, _HELD_OUT_TEST, _HELD_OUT_TRAIN = range(5)
# Diagonal covariance of x: variance j^-1.2 in dimension j (1-based), as in FedProx.
_FEATURE_STD = np.arange(1, NUM_FEATURES + 1, dtype=np.float64) ** -0.6


def client_size(client_id: int, *, seed: int) -> int:
    """Number of examples of client ``client_id``: ``floor(lognormal(4, 2)) + 50``."""
    _check_ids(client_id=client_id, seed=seed)
    rng = np.random.default_rng([seed, _SIZE, client_id])
    return int(rng.lognormal(4.0, 2.0)) + MIN_CLIENT_SIZE


@functools.lru_cache(maxsize=8)
def client_sizes(num_clients: int, *, seed: int) -> tuple[int, ...]:
    """Sizes of clients ``0 .. num_clients - 1`` (no data is generated)."""
    _check_count(num_clients)
    return tuple(client_size(k, seed=seed) for k in range(num_clients))


@functools.lru_cache(maxsize=128)
def client_data(client_id: int, *, alpha: float, beta: float, seed: int) -> TensorDataset:
    """All examples of client ``client_id``: float32 ``x`` of shape (n, 60), int64 ``y``."""
    size = client_size(client_id, seed=seed)
    return tensor_dataset(*_draw(client_id, size, _TRAIN, alpha=alpha, beta=beta, seed=seed))


@functools.lru_cache(maxsize=4)
def load_synthetic_splits(
    *, num_clients: int, alpha: float, beta: float, seed: int
) -> DatasetSplits:
    """Held-out samples of the federation's clients: ``test`` for the server, ``train`` for
    centralised baselines (see the module docstring)."""
    _check_count(num_clients)
    count = min(num_clients, CENTRAL_CLIENTS)
    clients = [i * num_clients // count for i in range(count)]
    per_client = math.ceil(CENTRAL_EXAMPLES / count)

    def sample(stream: int) -> TensorDataset:
        parts = [_draw(k, per_client, stream, alpha=alpha, beta=beta, seed=seed) for k in clients]
        return tensor_dataset(
            np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])
        )

    return DatasetSplits(
        train=sample(_HELD_OUT_TRAIN),
        test=sample(_HELD_OUT_TEST),
        num_classes=NUM_CLASSES,
        input_shape=(NUM_FEATURES,),
    )


def _draw(
    client_id: int, size: int, stream: int, *, alpha: float, beta: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``size`` examples of client ``client_id`` from seed stream ``stream``."""
    _check_ids(client_id=client_id, seed=seed)
    if alpha < 0 or beta < 0:
        raise ValueError(f"synthetic alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
    # The client's distribution: its own input mean and softmax model.
    params = np.random.default_rng([seed, _PARAMS, client_id])
    u = params.normal(0.0, alpha)
    v = params.normal(params.normal(0.0, beta), 1.0, NUM_FEATURES)
    weights = params.normal(u, 1.0, (NUM_FEATURES, NUM_CLASSES))
    bias = params.normal(u, 1.0, NUM_CLASSES)
    # Examples from it; argmax of the softmax = argmax of the logits.
    rng = np.random.default_rng([seed, stream, client_id])
    x = v + rng.standard_normal((size, NUM_FEATURES)) * _FEATURE_STD
    return x.astype(np.float32), np.argmax(x @ weights + bias, axis=1)


def _check_ids(*, client_id: int, seed: int) -> None:
    if client_id < 0:
        raise ValueError(f"synthetic client id must be >= 0, got {client_id}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


def _check_count(num_clients: int) -> None:
    if num_clients < 1:
        raise ValueError(f"number of clients must be >= 1, got {num_clients}")
