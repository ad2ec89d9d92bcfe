"""Checkpoints: what a run needs to continue after a crash, and a model to start from.

After every ``checkpoint-every`` rounds (and after the last) the run folder holds::

    <run-dir>/checkpoint/
      server.pt            the server's state after round k (the ServerApp writes it)
      clients.pt           the simulated nodes' Contexts after round k (the engine writes it)
      clients.previous.pt  the Contexts of the checkpoint before (see below)

``server.pt`` (:class:`Checkpoint`) holds the global weights, the round reached, the
strategy's own state (server optimiser moments, the ClientTracking ledgers), the
:class:`~server.round_recorder.RoundRecorder`'s metrics so far, the RNG states (Python's
``random``, with which Flower samples clients; numpy; torch) and the run config it was
written under. ``clients.pt`` (:func:`save_client_states`) holds each simulated node's
Context state (its privacy ledger and calibrated noise: recalibrating on resume would
spend ε again) and node config; a deployed node keeps its own record in its
``state-dir`` instead and no ``clients.pt`` is written.

Each file is one :func:`write_state_file` container, written atomically
(:func:`~fedmodel.atomic_files.write_atomically`): a header line naming the kind, the
format version and the SHA-256 of the payload, then the payload as ``torch.save`` of plain
Python values, tensors and bytes only (read back with ``weights_only=True``: no pickled
code). A truncated or altered file fails its checksum and is refused
(:class:`CheckpointError`).

The engine writes ``clients.pt`` just before the server writes ``server.pt``, after moving
the old ``clients.pt`` to ``clients.previous.pt``; both carry their round. A crash between
the two writes leaves ``server.pt`` one checkpoint behind ``clients.pt``, and
:func:`load_client_states` then takes ``clients.previous.pt``, whose round matches. Any
other mismatch is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedmodel.atomic_files import write_atomically
from fedmodel.config import ConfigError, RunConfig
from fedmodel.results.write_behind import write_later

CHECKPOINT_DIR = "checkpoint"
SERVER_FILE = "server.pt"
CLIENTS_FILE = "clients.pt"
PREVIOUS_CLIENTS_FILE = "clients.previous.pt"
FORMAT_VERSION = 1
# Run-config keys that may differ between the run that wrote a checkpoint and the one that
# resumes it: how it is resumed, how often it checkpoints, how its folder is spelled.
RESUMABLE_DIFFERENCES = frozenset({"resume", "checkpoint-every", "run-dir"})
_MAGIC = "fedmodel-checkpoint"
_HEADER = re.compile(
    rb"^fedmodel-checkpoint v(?P<version>\d+) (?P<kind>[a-z]+) sha256=(?P<digest>[0-9a-f]{64})\n"
)
_NDARRAY = "__ndarray__"  # the one key of an encoded numpy array (encode_state)


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, or does not belong to the run that would resume it."""


# -- the container: header line, checksum, torch.save payload -------------------------


def checkpoint_dir(run_dir: str | os.PathLike[str]) -> Path:
    """Where a run folder keeps its checkpoint."""
    return Path(run_dir) / CHECKPOINT_DIR


def write_state_file(path: str | os.PathLike[str], kind: str, state: Mapping[str, Any]) -> None:
    """Write ``state`` (see :func:`encode_state`) as a checksummed container, atomically.

    Parameters
    ----------
    path : path
        The file; its folder is created if needed.
    kind : str
        What the file holds (``"server"``, ``"clients"``); :func:`read_state_file` checks it.
    state : mapping
        Plain Python values, numpy arrays and tensors.
    """
    data = _state_file_bytes(kind, _snapshot(state))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # Written now, or by the run's write-behind thread, in order. Pickled here: see
    # fedmodel.results.write_behind (work holding the GIL there stalls the run).
    write_later(lambda: write_atomically(path, data))


def _snapshot(state: Mapping[str, Any]) -> Any:
    """:func:`encode_state` of ``state``, owning everything: the run may go on changing it.

    New containers, numpy arrays as bytes, tensors cloned: it can be pickled later
    (write-behind) and still hold the state as it was now.
    """
    return encode_state(dict(state), clone_tensors=True)


def _state_file_bytes(kind: str, snapshot: Any) -> bytes:
    """The bytes of a :func:`write_state_file` container of an encoded state: header, payload."""
    buffer = io.BytesIO()
    torch.save(snapshot, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest()
    return f"{_MAGIC} v{FORMAT_VERSION} {kind} sha256={digest}\n".encode() + payload


def read_state_file(path: str | os.PathLike[str], kind: str) -> dict[str, Any]:
    """Read back a :func:`write_state_file` container of ``kind``.

    Raises
    ------
    CheckpointError
        The file is missing, not a fedmodel checkpoint, of another kind or version, or
        damaged (its payload does not match the checksum in its header).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read the checkpoint: {error}") from error
    match = _HEADER.match(data[:200])
    if match is None:
        raise CheckpointError(f"{path}: not a fedmodel checkpoint (no valid header line)")
    if int(match["version"]) != FORMAT_VERSION or match["kind"].decode() != kind:
        raise CheckpointError(
            f"{path}: a v{int(match['version'])} {match['kind'].decode()!r} checkpoint; "
            f"expected v{FORMAT_VERSION} {kind!r}"
        )
    payload = data[match.end() :]
    if hashlib.sha256(payload).hexdigest() != match["digest"].decode():
        raise CheckpointError(
            f"{path}: the checkpoint is damaged (its content does not match the checksum "
            "in its header: truncated or altered)"
        )
    try:
        state = torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as error:  # noqa: BLE001 - whatever torch says, the file is unusable
        raise CheckpointError(f"{path}: the checkpoint cannot be read: {error}") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: the checkpoint holds {type(state).__name__}, not a dict")
    return decode_state(state)


def encode_state(value: Any, *, clone_tensors: bool = False) -> Any:
    """``value`` with numpy arrays and scalars replaced by exact, loadable stand-ins.

    Plain values (None, bool, int, float, str, bytes), tensors, lists, tuples and dicts
    pass through; a numpy array becomes ``{"__ndarray__": (dtype, shape, raw bytes)}``
    (every dtype but ``object``, bit for bit), a numpy scalar a 0-d array. Containers
    are always new; with ``clone_tensors`` tensors are copies too, so that the result
    shares nothing mutable with ``value``.
    """
    if isinstance(value, np.generic):  # before float: np.float64 is a float
        value = np.asarray(value)
    if isinstance(value, torch.Tensor):
        return value.detach().clone() if clone_tensors else value
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError("a checkpoint cannot hold numpy arrays of Python objects")
        array = np.ascontiguousarray(value)
        return {_NDARRAY: (array.dtype.str, tuple(array.shape), array.tobytes())}
    if isinstance(value, list | tuple):
        encoded = [encode_state(item, clone_tensors=clone_tensors) for item in value]
        return encoded if isinstance(value, list) else tuple(encoded)
    if isinstance(value, Mapping):
        if _NDARRAY in value:
            raise TypeError(f"a checkpointed mapping may not use the key {_NDARRAY!r}")
        return {key: encode_state(item, clone_tensors=clone_tensors) for key, item in value.items()}
    raise TypeError(f"a checkpoint cannot hold a {type(value).__name__}")


def decode_state(value: Any) -> Any:
    """The inverse of :func:`encode_state` (0-d arrays come back as 0-d arrays)."""
    if isinstance(value, dict):
        if set(value) == {_NDARRAY}:
            dtype, shape, data = value[_NDARRAY]
            return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape).copy()
        return {key: decode_state(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode_state(item) for item in value]
    if isinstance(value, tuple):
        return tuple(decode_state(item) for item in value)
    return value


# -- random number generators ---------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """The global RNG states: Python's ``random`` (Flower samples clients with it), numpy, torch."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(legacy=False),
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (after a round trip through a checkpoint)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


# -- the server's checkpoint ------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """The server's state after round ``round``: everything needed to run round ``round + 1``.

    Parameters
    ----------
    round : int
        The last round whose results the checkpoint holds (>= 1).
    run_config : dict
        The run config (kebab-case mapping) of the run that wrote it.
    model : dict of str to Tensor
        The global weights after ``round``, in the order of the model's state dict.
    strategy : Any
        The strategy's own state (the ServerApp's encoding: a list of per-layer states).
    recorder : dict
        The RoundRecorder's state (the metrics of rounds 1 to ``round``).
    rng : dict
        The RNG states (:func:`rng_state`) when round ``round`` ended.
    """

    round: int
    run_config: dict[str, Any]
    model: dict[str, torch.Tensor]
    strategy: Any
    recorder: dict[str, Any]
    rng: dict[str, Any]

    def state_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "run-config": dict(self.run_config),
            "model": dict(self.model),
            "strategy": self.strategy,
            "recorder": dict(self.recorder),
            "rng": dict(self.rng),
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], *, source: str) -> Checkpoint:
        """Build from :meth:`state_dict`; a malformed state raises naming ``source``."""
        missing = [
            key
            for key in ("round", "run-config", "model", "strategy", "recorder", "rng")
            if key not in state
        ]
        if missing:
            raise CheckpointError(f"{source}: the checkpoint lacks {', '.join(missing)}")
        model = state["model"]
        if (
            not isinstance(state["round"], int)
            or state["round"] < 1
            or not isinstance(state["run-config"], dict)
            or not isinstance(model, dict)
            or not all(isinstance(t, torch.Tensor) for t in model.values())
        ):
            raise CheckpointError(f"{source}: the checkpoint's round, config or model is malformed")
        return cls(
            round=state["round"],
            run_config=state["run-config"],
            model=model,
            strategy=state["strategy"],
            recorder=state["recorder"],
            rng=state["rng"],
        )

    def save(self, run_dir: str | os.PathLike[str]) -> None:
        """Write ``<run_dir>/checkpoint/server.pt`` (atomically, checksummed)."""
        write_state_file(checkpoint_dir(run_dir) / SERVER_FILE, "server", self.state_dict())

    @classmethod
    def load(cls, run_dir: str | os.PathLike[str]) -> Checkpoint:
        """Read ``<run_dir>/checkpoint/server.pt``; raises :class:`CheckpointError`."""
        path = checkpoint_dir(run_dir) / SERVER_FILE
        return cls.from_state_dict(read_state_file(path, "server"), source=str(path))

    def check_config(self, config: RunConfig) -> None:
        """Refuse to resume under a run config other than the one that wrote this checkpoint.

        Only the keys in :data:`RESUMABLE_DIFFERENCES` may differ; the run must not have
        finished.
        """
        current = config.to_mapping()
        keys = sorted(set(current) | set(self.run_config))
        differing = [
            key
            for key in keys
            if key not in RESUMABLE_DIFFERENCES and current.get(key) != self.run_config.get(key)
        ]
        if differing:
            shown = ", ".join(
                f"{key} = {current.get(key)!r} (checkpoint: {self.run_config.get(key)!r})"
                for key in differing[:5]
            )
            more = f" and {len(differing) - 5} more" if len(differing) > 5 else ""
            raise CheckpointError(
                f"the checkpoint of round {self.round} in {config.run_dir!r} was written by a "
                f"run with another config: {shown}{more}; resume with the run's own config"
            )
        if self.round >= config.num_server_rounds:
            raise CheckpointError(
                f"the run in {config.run_dir!r} finished all {config.num_server_rounds} "
                "rounds; nothing to resume"
            )


def resumable_run(run_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run config and the rest of ``config.json`` of a run folder that can be resumed.

    Checks that ``config.json`` and a readable checkpoint are there before anything runs.

    Returns
    -------
    run_config : dict
        The run config the run was started with (kebab-case keys).
    document : dict
        All of ``config.json`` (``num_nodes``, ``input_shape``, ...).
    """
    path = Path(run_dir) / "config.json"
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{run_dir}: holds no run to resume (no config.json)") from None
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot be read: {error}") from error
    if not isinstance(document, dict) or not isinstance(document.get("run_config"), dict):
        raise CheckpointError(f"{path}: has no run_config")
    checkpoint = Checkpoint.load(run_dir)
    if checkpoint.run_config != document["run_config"]:
        differing = sorted(
            key
            for key in set(checkpoint.run_config) | set(document["run_config"])
            if key not in RESUMABLE_DIFFERENCES
            and checkpoint.run_config.get(key) != document["run_config"].get(key)
        )
        if differing:
            raise CheckpointError(
                f"{run_dir}: config.json and the checkpoint disagree on {', '.join(differing)}"
            )
    return dict(document["run_config"]), document


def check_resumable_run_dir(run_dir: str | os.PathLike[str]) -> None:
    """Refuse to resume in a folder without a run or without a readable checkpoint."""
    if not (Path(run_dir) / "config.json").is_file():
        raise CheckpointError(f"{run_dir}: holds no run to resume (no config.json)")
    Checkpoint.load(run_dir)


# -- the simulated nodes' Contexts ------------------------------------------------------


def save_client_states(
    run_dir: str | os.PathLike[str], *, server_round: int, nodes: Mapping[int, Mapping[str, Any]]
) -> None:
    """Write ``clients.pt``: each simulated node's state after ``server_round``.

    The previous ``clients.pt`` becomes ``clients.previous.pt`` first (see the module
    docstring: the server's checkpoint of this round is written after this one).

    Parameters
    ----------
    run_dir : path
        The run folder.
    server_round : int
        The round the server is checkpointing.
    nodes : mapping of node id to mapping
        Per node the engine's record of it (e.g. ``node-config`` and the serialised
        Context ``state``): plain values and bytes.
    """
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    state = {"round": server_round, "nodes": {int(k): dict(v) for k, v in nodes.items()}}
    data = _state_file_bytes("clients", _snapshot(state))  # now: see write_state_file

    def write() -> None:  # in order with the other writes (fedmodel.results.write_behind)
        if (folder / CLIENTS_FILE).exists():
            os.replace(folder / CLIENTS_FILE, folder / PREVIOUS_CLIENTS_FILE)
        write_atomically(folder / CLIENTS_FILE, data)

    write_later(write)


def load_client_states(
    run_dir: str | os.PathLike[str], *, server_round: int
) -> dict[int, dict[str, Any]]:
    """The simulated nodes' states saved with the server's checkpoint of ``server_round``.

    Raises
    ------
    CheckpointError
        Neither ``clients.pt`` nor ``clients.previous.pt`` holds that round (or one is
        damaged): resuming would restart the nodes' privacy ledgers out of step.
    """
    folder = checkpoint_dir(run_dir)
    found: list[str] = []
    for name in (CLIENTS_FILE, PREVIOUS_CLIENTS_FILE):
        if not (folder / name).exists():
            continue
        state = read_state_file(folder / name, "clients")
        if state.get("round") == server_round and isinstance(state.get("nodes"), dict):
            return {int(node): dict(entry) for node, entry in state["nodes"].items()}
        found.append(f"{name} holds round {state.get('round')}")
    held = "; ".join(found) if found else f"no {CLIENTS_FILE}"
    raise CheckpointError(
        f"{folder}: the server's checkpoint is of round {server_round} but {held}: the "
        "nodes' privacy ledgers would not match the server's round; refusing to resume"
    )


# -- a model to start from --------------------------------------------------------------


def check_state_dict_fits(model: nn.Module, state: Mapping[str, Any], *, source: str) -> None:
    """Raise :class:`ConfigError` at the first key or shape where ``state`` and ``model`` differ.

    Dtypes may differ (``load_state_dict`` converts); names and shapes may not.
    """
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise ConfigError(f"{source}: lacks key {key!r} of the model (first missing key)")
        given = state[key]
        if not isinstance(given, torch.Tensor):
            raise ConfigError(f"{source}: key {key!r} holds {type(given).__name__}, not a tensor")
        if tuple(given.shape) != tuple(tensor.shape):
            raise ConfigError(
                f"{source}: key {key!r} has shape {tuple(given.shape)}, the model's is "
                f"{tuple(tensor.shape)}"
            )
    extra = [key for key in state if key not in expected]
    if extra:
        raise ConfigError(f"{source}: has key {extra[0]!r}, which the model does not have")


def load_initial_model(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load run-config ``initial-model`` (a state dict file, e.g. a run's model.pt) into ``model``.

    Raises
    ------
    ConfigError
        The file is missing or is not a state dict of tensors, or it does not fit the
        model built by name (the first key or shape that differs is named).
    """
    source = f"run-config key 'initial-model' = {str(path)!r}"
    file = Path(path)
    if file.is_dir():
        raise ConfigError(f"{source} is a folder; give a state dict file, e.g. its model.pt")
    if not file.is_file():
        raise ConfigError(f"{source}: no such file")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure means it is not a state dict
        raise ConfigError(f"{source}: cannot be read as a torch state dict: {error}") from error
    if not isinstance(state, Mapping):
        raise ConfigError(f"{source}: holds {type(state).__name__}, not a state dict")
    check_state_dict_fits(model, state, source=source)
    model.load_state_dict(dict(state))
