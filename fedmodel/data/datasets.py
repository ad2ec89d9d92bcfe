"""The datasets run-config ``dataset`` can name, and how the clients of a federation get each.

A dataset is a :class:`DatasetSpec` registered in :data:`DATASETS`; a new one is its
module plus one ``register`` line at the end. Its properties say which of three kinds it
is, and the code that serves data (``fedmodel.data``, ``fedmodel.data.sources``, the run
config) asks them instead of the dataset's name:

- loaded whole and split across the clients by run-config ``partitioner`` (``load``):
  digits, MNIST, Fashion-MNIST;
- generated per client, not :attr:`~DatasetSpec.partitioned` (``clients``): synthetic;
- brought by the clients, :attr:`~DatasetSpec.own_data`: custom (README, "Use your own
  data").
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from torch.utils.data import TensorDataset

from fedmodel.data import synthetic
from fedmodel.data.digits import load_digits_splits
from fedmodel.data.mnist import load_mnist_splits
from fedmodel.data.splits import DatasetSplits
from fedmodel.registry import Registry

if TYPE_CHECKING:  # for hints only: the run config takes its allowed datasets from here
    from fedmodel.config import RunConfig


class Loader(Protocol):
    """The whole dataset (training and test split) in ``data_dir``, split as ``seed`` says."""

    def __call__(self, *, data_dir: str, seed: int) -> DatasetSplits: ...


@dataclass(frozen=True)
class GeneratedClients:
    """A dataset whose every client's data is generated on its own (no partitioner).

    Parameters
    ----------
    input_shape : tuple of int
        Shape of one example (known without generating any data).
    num_classes : int
        Number of classes.
    sizes : callable
        ``sizes(config, num_clients)``: the number of examples of each client.
    data : callable
        ``data(config, client_id)``: the examples of that client.
    held_out : callable
        ``held_out(config, num_clients)``: held-out examples of the federation's clients,
        ``test`` for the server and ``train`` for centralised baselines.
    """

    input_shape: tuple[int, ...]
    num_classes: int
    sizes: Callable[[RunConfig, int], Sequence[int]]
    data: Callable[[RunConfig, int], TensorDataset]
    held_out: Callable[[RunConfig, int], DatasetSplits]


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset run-config ``dataset`` can name; neither ``load`` nor ``clients``: the
    clients bring their own data.

    Parameters
    ----------
    load : Loader, optional
        The whole dataset; run-config ``partitioner`` splits its training split.
    clients : GeneratedClients, optional
        A dataset generated per client instead.
    heterogeneity : str
        For a dataset generated per client: how to make its clients differ, since the
        partitioner cannot (for the run config's message).
    """

    load: Loader | None = None
    clients: GeneratedClients | None = None
    heterogeneity: str = ""

    def __post_init__(self) -> None:
        if self.load is not None and self.clients is not None:
            raise ValueError("a dataset is either loaded whole or generated per client")

    @property
    def partitioned(self) -> bool:
        """Run-config ``partitioner`` splits the data across the clients."""
        return self.clients is None

    @property
    def own_data(self) -> bool:
        """The clients bring their own data (``data-path``); nothing is built in."""
        return self.load is None and self.clients is None


@functools.lru_cache(maxsize=4)
def load_dataset(name: str, *, data_dir: str = "", seed: int = 0) -> DatasetSplits:
    """Load a dataset that is loaded whole, by name (cached: many clients in one process
    share it)."""
    spec = DATASETS.get(name)
    if spec.load is None:
        why = "its clients bring their own" if spec.own_data else "it is generated per client"
        raise ValueError(f"dataset {name!r} cannot be loaded whole: {why}")
    return spec.load(data_dir=data_dir, seed=seed)


def _digits(*, data_dir: str, seed: int) -> DatasetSplits:
    return load_digits_splits(seed=seed)  # shipped with scikit-learn: no data-dir


def _idx_files(name: str) -> Loader:
    def load(*, data_dir: str, seed: int) -> DatasetSplits:
        return load_mnist_splits(name, data_dir=data_dir)  # the official split: no seed

    return load


def _synthetic_sizes(config: RunConfig, num_clients: int) -> Sequence[int]:
    return synthetic.client_sizes(num_clients, seed=config.seed)


def _synthetic_client(config: RunConfig, client_id: int) -> TensorDataset:
    return synthetic.client_data(
        client_id, alpha=config.synthetic_alpha, beta=config.synthetic_beta, seed=config.seed
    )


def _synthetic_held_out(config: RunConfig, num_clients: int) -> DatasetSplits:
    return synthetic.load_synthetic_splits(
        num_clients=num_clients,
        alpha=config.synthetic_alpha,
        beta=config.synthetic_beta,
        seed=config.seed,
    )


DATASETS: Registry[DatasetSpec] = Registry("dataset")
DATASETS.register("digits", DatasetSpec(load=_digits))
DATASETS.register("mnist", DatasetSpec(load=_idx_files("mnist")))
DATASETS.register("fashion-mnist", DatasetSpec(load=_idx_files("fashion-mnist")))
DATASETS.register("custom", DatasetSpec())
DATASETS.register(
    "synthetic",
    DatasetSpec(
        clients=GeneratedClients(
            input_shape=(synthetic.NUM_FEATURES,),
            num_classes=synthetic.NUM_CLASSES,
            sizes=_synthetic_sizes,
            data=_synthetic_client,
            held_out=_synthetic_held_out,
        ),
        heterogeneity="set synthetic-alpha / synthetic-beta for heterogeneity",
    ),
)
