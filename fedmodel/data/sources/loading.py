"""From a data spec (a path or ``package.module:function``) to validated :class:`SourceData`.

The form is recognised from the spec:

- ``*.npz`` — a NumPy archive; ``*.csv`` — a table with a header;
- a folder holding ``<x-key>.npy`` — a NumPy folder (large arrays read on demand); any
  other folder — an image folder (one sub-folder per class);
- ``package.module:function`` — a Python loader;
- a glob pattern (``clients/*``) — one match per client, in sorted order.

:func:`client_source` picks a client's data from its node config and the run config.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedmodel.config import RunConfig
from fedmodel.data.datasets import DATASETS
from fedmodel.data.partitioning import partition
from fedmodel.data.sources.base import DataOptions, LabelledData, SourceData
from fedmodel.data.sources.csv_table import load_csv
from fedmodel.data.sources.image_folder import load_image_folder
from fedmodel.data.sources.npz import load_npy_folder, load_npz
from fedmodel.data.sources.python_loader import (
    HELD_PREFIX,
    call_loader,
    check_dataset,
    held_source,
    is_loader_spec,
    split_pair,
)
from fedmodel.data.sources.validation import DataError, check_class_count

FORMS = (
    ".npz archive, .csv table, folder with <x-key>.npy and <y-key>.npy, image folder "
    "(one sub-folder per class), or package.module:function"
)
# Node-config key naming this node's own data (deployment, or simulate(client_data=...)).
NODE_DATA_KEY = "data-path"


def load_source(spec: str, *, options: DataOptions) -> SourceData:
    """Load and validate the data named by ``spec`` (see the module docstring).

    Loaded sources are cached per process (many in-process clients may share one
    file); a file's modification time and size are part of the key, so a rewritten
    file is read again. A held object is checked once, until it is released.
    """
    if not spec:
        raise DataError("empty data path")
    if spec.startswith(HELD_PREFIX):
        return held_source(
            spec, options, lambda value: _from_python(value, origin=spec, options=options)
        )
    if is_loader_spec(spec) and not os.path.exists(spec):
        return _load_cached(spec, options, None)
    path = Path(spec).expanduser()
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise DataError(f"{spec}: no such file or folder") from None
    except OSError as error:
        raise DataError(
            f"{spec}: cannot read: {error}", public=f"{spec}: cannot read: {type(error).__name__}"
        ) from error
    return _load_cached(str(path), options, (stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=32)
def _load_cached(spec: str, options: DataOptions, _stamp: tuple[int, int] | None) -> SourceData:
    if _stamp is None:
        return _from_python(call_loader(spec), origin=spec, options=options)
    path = Path(spec)
    class_names: tuple[str, ...] = ()
    if path.is_dir():
        if (path / f"{options.x_key}.npy").exists():
            train, shape = load_npy_folder(path, options=options)
        else:
            train, shape, class_names = load_image_folder(path, options=options)
    elif path.suffix.lower() == ".npz":
        train, shape = load_npz(path, options=options)
    elif path.suffix.lower() == ".csv":
        train, shape = load_csv(path, options=options)
    elif path.suffix.lower() == ".npy":
        raise DataError(
            f"{path}: a single .npy holds one array; put {options.x_key}.npy (features) and "
            f"{options.y_key}.npy (labels) in a folder and give the folder"
        )
    else:
        raise DataError(
            f"{path}: unknown format {path.suffix or '(no suffix)'!r}; expected {FORMS}"
        )
    return SourceData(
        train=train,
        test=None,
        input_shape=shape,
        num_classes=options.num_classes or len(class_names) or _label_count([train], origin=spec),
        class_names=class_names,
        origin=str(path),
    )


def _from_python(value: Any, *, origin: str, options: DataOptions) -> SourceData:
    train_set, test_set = split_pair(value, origin=origin)
    name = f"{origin} (train)" if test_set is not None else origin
    train, shape = check_dataset(train_set, origin=name, num_classes=options.num_classes)
    test = None
    if test_set is not None:
        test, test_shape = check_dataset(
            test_set, origin=f"{origin} (test)", num_classes=options.num_classes
        )
        if test_shape != shape:
            raise DataError(
                f"{origin}: test examples have shape {test_shape} but training examples {shape}"
            )
    return SourceData(
        train=train,
        test=test,
        input_shape=shape,
        num_classes=options.num_classes or _label_count([train, test], origin=origin),
        class_names=(),
        origin=origin,
    )


def _label_count(splits: list[LabelledData | None], *, origin: str) -> int:
    """The class count inferred from the labels of ``splits`` (largest + 1), refused when
    implausible before anything is sized by it."""
    held = [split for split in splits if split is not None]
    count = max(int(split.labels.max()) + 1 for split in held)
    check_class_count(count, num_examples=sum(len(split) for split in held), origin=origin)
    return count


def is_pattern(spec: str) -> bool:
    """Whether ``spec`` is a glob pattern (one match per client)."""
    return any(char in spec for char in "*?[")


def match_client_paths(pattern: str) -> list[str]:
    """The sorted matches of ``pattern``: client ``i`` holds match ``i``."""
    matches = sorted(glob.glob(os.path.expanduser(pattern)))
    if not matches:
        raise DataError(f"{pattern}: matches no file or folder")
    return matches


def client_source(config: RunConfig, *, node_config: Mapping[str, Any]) -> SourceData:
    """This client's data, under a run-config ``dataset`` whose clients bring their own
    (``dataset = "custom"``).

    - node config ``data-path``: this node's own data, used whole;
    - else run-config ``data-path``, with node config ``partition-id`` and
      ``num-partitions``: a glob pattern gives client ``i`` its ``i``-th match; one
      dataset is split by ``partitioner`` (every client computes the same split).
    """
    options = DataOptions.from_config(config)
    own_data = DATASETS.get(config.dataset).own_data
    if NODE_DATA_KEY in node_config:
        if not own_data:
            raise DataError(
                f"node config gives data-path {node_config[NODE_DATA_KEY]!r} but run-config "
                f"'dataset' is {config.dataset!r}; set dataset = \"custom\""
            )
        return load_source(str(node_config[NODE_DATA_KEY]), options=options)
    if not own_data or not config.data_path:
        raise DataError(
            "no data for this client: give node config 'data-path' (its own data) or "
            "run-config 'data-path' with dataset = \"custom\""
        )
    if "partition-id" not in node_config or "num-partitions" not in node_config:
        raise DataError(
            f"run-config data-path {config.data_path!r} is shared: node config needs "
            f"'partition-id' and 'num-partitions' (got {sorted(node_config)}), or give the "
            "node its own 'data-path'"
        )
    partition_id, num_partitions = (
        int(node_config["partition-id"]),
        int(node_config["num-partitions"]),
    )
    if not 0 <= partition_id < num_partitions:
        raise DataError(
            f"partition-id {partition_id} is out of range for {num_partitions} partitions"
        )
    if is_pattern(config.data_path):
        matches = match_client_paths(config.data_path)
        if len(matches) != num_partitions:
            raise DataError(
                f"{config.data_path}: matches {len(matches)} entries but the federation has "
                f"{num_partitions} clients; one match per client"
            )
        return load_source(matches[partition_id], options=options)
    source = load_source(config.data_path, options=options)
    indices = _partitions(config, num_partitions)[partition_id]
    return dataclasses.replace(
        source,
        train=source.train.subset(indices),
        origin=f"{source.origin} (partition {partition_id} of {num_partitions})",
    )


@functools.lru_cache(maxsize=8)
def _partitions(config: RunConfig, num_partitions: int) -> list[np.ndarray]:
    source = load_source(config.data_path, options=DataOptions.from_config(config))
    try:
        return partition(
            source.train.labels,
            partitioner=config.partitioner,
            num_partitions=num_partitions,
            seed=config.seed,
            dirichlet_alpha=config.dirichlet_alpha,
            shards_per_client=config.shards_per_client,
        )
    except ValueError as error:
        raise DataError(
            f"{source.origin}: cannot split for {num_partitions} clients: {error}",
            public=f"{source.origin}: cannot split for {num_partitions} clients with "
            f"partitioner {config.partitioner!r}",
        ) from error


def load_test_set(config: RunConfig) -> SourceData | None:
    """The server's central test set (run-config ``test-data``), or None when not given.

    A Python loader may return a (train, test) pair: its test split is used.
    """
    if not config.test_data:
        return None
    if is_pattern(config.test_data):
        raise DataError(f"{config.test_data}: test-data names one dataset, not a pattern")
    source = load_source(config.test_data, options=DataOptions.from_config(config))
    if source.test is not None:
        return dataclasses.replace(source, train=source.test, test=None)
    return source
