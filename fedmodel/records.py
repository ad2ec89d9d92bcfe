"""The one Flower adapter in fedmodel: privacy ledgers, data descriptions and compressed
updates as records, and the serialised size of records.

A client sends its ledger with every training reply (under the ``"privacy"`` key) and
keeps it in its Context state; both are Flower ``ConfigRecord``s of flat lists, since
records hold scalars and lists of scalars only.
"""

from __future__ import annotations

import functools
import io
import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.app.message.recorddict import _SyncedDict
from flwr.common.serde import recorddict_to_proto

from fedmodel.compression import CompressedTensor, CompressedUpdate
from fedmodel.data.sources.federation import DataDescription, FederationData

LEDGER_KEYS = ("accountant", "delta", "sigmas", "sample-rates", "steps")


def ledger_to_record(state: dict[str, Any], **extra: Any) -> ConfigRecord:
    """A ``PrivacyLedger.state_dict()`` (plus scalar ``extra`` fields) as a ConfigRecord."""
    history = state["history"]
    record = ConfigRecord(
        {
            "accountant": str(state["accountant"]),
            "delta": float(state["delta"]),
            "sigmas": [float(s) for s, _, _ in history],
            "sample-rates": [float(q) for _, q, _ in history],
            "steps": [int(n) for _, _, n in history],
        }
    )
    for key, value in extra.items():
        record[key] = value
    return record


def record_to_ledger(record: ConfigRecord, *, source: str) -> dict[str, Any]:
    """Back to a ledger state dict; a malformed record raises naming ``source``."""
    missing = [key for key in LEDGER_KEYS if key not in record]
    if missing:
        raise ValueError(f"privacy record from {source} lacks {', '.join(missing)}")
    sigmas, rates, steps = record["sigmas"], record["sample-rates"], record["steps"]
    if not (
        isinstance(sigmas, list) and isinstance(rates, list) and isinstance(steps, list)
    ) or not (len(sigmas) == len(rates) == len(steps)):
        raise ValueError(
            f"privacy record from {source}: sigmas, sample-rates, steps must be equal-length lists"
        )
    if (
        any(s < 0 for s in sigmas)
        or any(not 0 < q <= 1 for q in rates)
        or any(n < 0 for n in steps)
    ):
        raise ValueError(f"privacy record from {source}: history values out of range")
    return {
        "accountant": record["accountant"],
        "delta": float(record["delta"]),  # type: ignore[arg-type]
        "history": [
            [float(s), float(q), int(n)] for s, q, n in zip(sigmas, rates, steps, strict=True)
        ],
    }


def client_privacy_to_record(state: dict[str, Any]) -> ConfigRecord:
    """A ``ClientPrivacy.state_dict()`` as a ConfigRecord (for the client's Context state)."""
    extra: dict[str, Any] = {"key": str(state["key"])}
    if state.get("calibrated-noise") is not None:
        extra["calibrated-noise"] = float(state["calibrated-noise"])
    return ledger_to_record(state["ledger"], **extra)


def record_to_client_privacy(record: ConfigRecord, *, source: str) -> dict[str, Any]:
    """Back to a ``ClientPrivacy`` state dict; a malformed record raises naming ``source``."""
    noise = record.get("calibrated-noise")
    return {
        "ledger": record_to_ledger(record, source=source),
        "calibrated-noise": None if noise is None else float(noise),  # type: ignore[arg-type]
        "key": str(record.get("key", "")),
    }


# -- custom data: what a client holds, and the model input the server agreed on -------


def description_to_record(description: DataDescription) -> ConfigRecord:
    """A client's data description (its reply to the server's data query)."""
    return ConfigRecord(
        {
            "input-shape": list(description.input_shape),
            "num-classes": description.num_classes,
            "num-examples": description.num_examples,
            "class-names": list(description.class_names),
            "origin": description.origin,
        }
    )


def record_to_description(record: ConfigRecord, *, source: str) -> DataDescription:
    """Back to a description; a malformed record raises naming ``source``."""
    try:
        shape, names = record["input-shape"], record["class-names"]
        if not isinstance(shape, list) or not isinstance(names, list):
            raise TypeError("input-shape and class-names must be lists")
        description = DataDescription(
            input_shape=tuple(int(n) for n in shape),  # type: ignore[arg-type]
            num_classes=int(record["num-classes"]),  # type: ignore[arg-type]
            num_examples=int(record["num-examples"]),  # type: ignore[arg-type]
            class_names=tuple(str(n) for n in names),
            origin=str(record["origin"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"data description from {source} is malformed: {error}") from error
    if (
        not description.input_shape
        or min(description.input_shape) < 1
        or description.num_classes < 1
        or description.num_examples < 1
    ):
        raise ValueError(f"data description from {source} is out of range: {description}")
    return description


def federation_to_record(federation: FederationData) -> ConfigRecord:
    """The agreed model input, sent with every training and evaluation message."""
    return ConfigRecord(
        {"input-shape": list(federation.input_shape), "num-classes": federation.num_classes}
    )


def record_to_federation(record: ConfigRecord) -> FederationData:
    """Back from :func:`federation_to_record` (the server's own record)."""
    shape = record["input-shape"]
    assert isinstance(shape, list)
    return FederationData(
        input_shape=tuple(int(n) for n in shape),  # type: ignore[arg-type]
        num_classes=int(record["num-classes"]),  # type: ignore[arg-type]
    )


# -- compressed updates (fedmodel.compression) -----------------------------------------

COMPRESSED_ARRAYS_KEY = "compressed-update"  # ArrayRecord: the packed parts
COMPRESSION_KEY = "compression"  # ConfigRecord: method, names, dtypes, shapes, lengths
_PACKED = {"int8": ("q",), "topk": ("indices", "values")}  # one Array per part, all tensors


def compressed_to_records(compressed: CompressedUpdate) -> dict[str, ArrayRecord | ConfigRecord]:
    """A compressed update as the two records a training reply carries in its place.

    The parts of every tensor are packed into one flat Array per kind (``q``; or
    ``indices`` and ``values``), split again by the ``lengths`` of the ConfigRecord, so
    that an update pays one array header, not one per tensor; ``int8`` scales are a list
    in the ConfigRecord; a non-float tensor is an Array of its own (``raw/<name>``).
    """
    tensors = compressed.tensors
    packed_names = _PACKED[compressed.method]
    floats = {name: t for name, t in tensors.items() if "raw" not in t.parts}
    arrays = ArrayRecord(
        {
            part: Array(torch.cat([t.parts[part].reshape(-1) for t in floats.values()]).numpy())
            for part in packed_names
            if floats
        }
    )
    for name, tensor in tensors.items():
        if "raw" in tensor.parts:
            arrays[f"raw/{name}"] = Array(tensor.parts["raw"].contiguous().numpy())
    shapes = [tensor.shape for tensor in tensors.values()]
    config = ConfigRecord(
        {
            "method": compressed.method,
            "names": list(tensors),
            "dtypes": [str(t.dtype).removeprefix("torch.") for t in tensors.values()],
            "ndims": [len(shape) for shape in shapes],
            "dims": [int(n) for shape in shapes for n in shape] or [0],
            "lengths": [
                0 if "raw" in t.parts else t.parts[packed_names[0]].numel()
                for t in tensors.values()
            ],
        }
    )
    if compressed.method == "int8":
        config["scales"] = [
            float(t.parts["scale"]) if "raw" not in t.parts else 1.0 for t in tensors.values()
        ]
    return {COMPRESSED_ARRAYS_KEY: arrays, COMPRESSION_KEY: config}


def records_to_compressed(content: RecordDict, *, source: str) -> CompressedUpdate:
    """Back from :func:`compressed_to_records`; a malformed reply raises naming ``source``."""
    try:
        return _records_to_compressed(content)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"compressed update from {source} is malformed: {error}") from error


def _records_to_compressed(content: RecordDict) -> CompressedUpdate:
    config, arrays = content[COMPRESSION_KEY], content[COMPRESSED_ARRAYS_KEY]
    if not isinstance(config, ConfigRecord) or not isinstance(arrays, ArrayRecord):
        raise TypeError("compression records of the wrong kind")
    method = str(config["method"])
    if method not in _PACKED:
        raise ValueError(f"unknown method {method!r}")
    keys = ["names", "dtypes", "ndims", "dims", "lengths"]
    keys += ["scales"] if method == "int8" else []
    if not all(isinstance(config[key], list) for key in keys):
        raise TypeError(f"{', '.join(keys)} must be lists")
    names = [str(n) for n in config["names"]]  # type: ignore[union-attr]
    dtypes = [str(n) for n in config["dtypes"]]  # type: ignore[union-attr]
    ndims, dims, lengths = ([int(n) for n in config[key]] for key in keys[2:5])  # type: ignore[union-attr,arg-type]
    scales = [float(n) for n in config["scales"]] if method == "int8" else None  # type: ignore[union-attr,arg-type]
    count = len(names)
    if not count == len(dtypes) == len(ndims) == len(lengths) == len(scales or names):
        raise ValueError(f"{', '.join(keys)} differ in length")
    if len(set(names)) != count:
        raise ValueError("names repeat")
    if min([*ndims, *lengths], default=0) < 0 or sum(ndims) > len(dims):
        raise ValueError("ndims, dims or lengths out of range")
    packed = {}
    for part in _PACKED[method]:
        flat = torch.from_numpy(arrays[part].numpy().reshape(-1).copy()) if part in arrays else None
        if (0 if flat is None else flat.numel()) != sum(lengths):
            raise ValueError(f"part {part!r} does not hold the {sum(lengths)} values of lengths")
        packed[part] = flat
    extra = [key for key in arrays if key not in packed and key[4:] not in names]
    if extra:
        raise ValueError(f"arrays {extra[:3]} belong to no listed tensor")
    tensors, at, offset = {}, 0, 0
    for i, name in enumerate(names):
        shape = tuple(dims[at : at + ndims[i]])
        at += ndims[i]
        dtype = getattr(torch, dtypes[i], None)
        if not isinstance(dtype, torch.dtype) or min(shape, default=1) < 0:
            raise ValueError(f"tensor {name!r}: dtype {dtypes[i]!r} or shape {shape}")
        if f"raw/{name}" in arrays:
            parts = {"raw": torch.from_numpy(arrays[f"raw/{name}"].numpy().copy())}
        else:
            parts = {
                part: flat[offset : offset + lengths[i]]  # type: ignore[index]
                for part, flat in packed.items()
            }
            if scales is not None:
                parts["scale"] = torch.tensor([scales[i]], dtype=torch.float32)
        offset += lengths[i]
        tensors[name] = CompressedTensor(shape=shape, dtype=dtype, parts=parts)
    return CompressedUpdate(method=method, tensors=tensors)


def state_dict_to_record(state: Mapping[str, torch.Tensor | np.ndarray]) -> ArrayRecord:
    """``ArrayRecord(state)``, byte for byte, at a fraction of the cost (see :func:`to_array`)."""
    record = ArrayRecord()  # not ArrayRecord(dict): it would copy every Array once more
    for name, value in state.items():
        record[name] = to_array(value)
    return record


def record_to_state_dict(record: ArrayRecord) -> OrderedDict[str, torch.Tensor]:
    """``record.to_torch_state_dict()``: the same tensors (writable copies), decoded faster."""
    return OrderedDict(
        (name, torch.from_numpy(to_numpy(array).copy())) for name, array in record.items()
    )


def to_array(value: torch.Tensor | np.ndarray) -> Array:
    """``Array(value)`` with the same bytes: the ``.npy`` header cached per dtype and shape.

    Why by hand: Flower's ``Array`` runs ``np.save`` per array, whose header formatting
    costs more than copying a small model's values (~40 us of ~50 per array); a round of
    100 replies of 6 arrays paid it 600 times. For a C-contiguous array ``np.save`` writes
    the header (a function of dtype and shape only) and then ``tobytes()``, so the result
    is identical. Anything else (Fortran order, object dtypes) goes through Flower.
    """
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
    if array.dtype.hasobject or array.dtype.fields is not None or not array.flags.c_contiguous:
        return Array(np.asarray(array))
    dtype_name, header = _npy_header(array.dtype, array.shape)
    # The object Array(dtype=, shape=, stype=, data=) builds, its fields in its order
    # (tests compare whole objects): its argument checks cost ~6 of ~7 us a call.
    built = Array.__new__(Array)
    built.__dict__.update(
        _is_dirty=True,
        dtype=dtype_name,
        shape=array.shape,
        stype="numpy.ndarray",
        data=header + array.tobytes(),
    )
    return built


def to_numpy(array: Array) -> np.ndarray:
    """``array.numpy()`` as a read-only view of its bytes (no copy, header parse cached).

    Why by hand: ``np.load`` parses the ``.npy`` header with ``ast.literal_eval`` on
    every call (~45 us of ~50 for a small array). The header is parsed once per distinct
    header and the bytes after it are viewed only if they are exactly the values the
    header describes; every other case (other versions, Fortran order, a size mismatch,
    a malformed header) is left to ``array.numpy()``, which reads or rejects it.
    """
    view = _view(array)
    return Array.numpy(array) if view is None else view


def _view(array: Array) -> np.ndarray | None:
    """:func:`to_numpy`'s read-only view, or None where ``Array.numpy`` must read it."""
    data = array.data
    if array.stype != "numpy.ndarray" or data[:6] != b"\x93NUMPY" or len(data) < 10:
        return None
    if data[6] == 1:
        offset = 10 + int.from_bytes(data[8:10], "little")
    elif data[6] == 2:
        offset = 12 + int.from_bytes(data[8:12], "little")
    else:
        return None
    parsed = _parsed_header(bytes(data[:offset]))
    if parsed is None:
        return None
    dtype, shape = parsed
    if len(data) - offset != dtype.itemsize * math.prod(shape):
        return None  # truncated or padded: np.load says what is wrong
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)


class DecodedArray(Array):
    """Flower's :class:`~flwr.app.Array`, same fields and bytes, whose ``numpy()`` is fast.

    ``numpy()`` returns what ``Array.numpy()`` (``np.load``) returns - a new, writable
    array of the same dtype, shape and values - decoded by :func:`to_numpy` (header
    parse cached) and copied: ~5 us instead of ~50 for a small array. Flower's FedAvg
    (``aggregate_arrayrecords``) calls it for every array of every reply: 600 calls a
    round of 100 clients.

    Only for replies that stay in this process (:func:`decode_fast`): Flower's object
    deflation names an object's class, so such an array must not be sent anywhere.
    """

    def numpy(self) -> np.ndarray:  # type: ignore[override]
        view = _view(self)
        return Array.numpy(self) if view is None else view.copy()


class DecodedRecordDict(RecordDict):
    """Flower's :class:`~flwr.app.RecordDict`, same records, whose views are cheap.

    ``array_records``, ``metric_records`` and ``config_records`` return what Flower's
    return - a ``_SyncedDict`` holding the records of that type, in order, whose
    changes go back into this RecordDict - but without writing every record back into
    this RecordDict through two type checks first (a view: ~4 us instead of ~17).
    Flower's FedAvg and the reply checks take ~8 views of every reply: 800 a round of
    100 clients. Like :class:`DecodedArray`, only for replies that stay in this process.
    """

    def _view(self, kind: type) -> Any:
        view = _SyncedDict(self, kind)
        view.__dict__["_data"].update(
            (key, record) for key, record in self.items() if isinstance(record, kind)
        )
        return view

    @property
    def array_records(self) -> Any:  # type: ignore[override]
        return self._view(ArrayRecord)

    @property
    def metric_records(self) -> Any:  # type: ignore[override]
        return self._view(MetricRecord)

    @property
    def config_records(self) -> Any:  # type: ignore[override]
        return self._view(ConfigRecord)


def decode_fast(content: RecordDict) -> RecordDict:
    """Make ``content`` a :class:`DecodedRecordDict` and its arrays :class:`DecodedArray` objects.

    In place; nothing else changes (same objects, fields, bytes). For the in-process
    engines' replies, which never leave the process.
    """
    if type(content) is RecordDict:
        content.__class__ = DecodedRecordDict
    for record in content.array_records.values():
        for array in record.values():
            if type(array) is Array:
                array.__class__ = DecodedArray
    return content


@functools.lru_cache(maxsize=1024)
def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> tuple[str, bytes]:
    """``str(dtype)`` (~3 us a call) and the ``.npy`` header ``np.save`` writes."""
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(shape, dtype=dtype), allow_pickle=False)
    size = dtype.itemsize * math.prod(shape)
    return str(dtype), buffer.getvalue()[: -size or None]


@functools.lru_cache(maxsize=1024)
def _parsed_header(header: bytes) -> tuple[np.dtype, tuple[int, ...]] | None:
    try:
        stream = io.BytesIO(header)
        major, _ = np.lib.format.read_magic(stream)
        read = (
            np.lib.format.read_array_header_1_0
            if major == 1
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read(stream)
    except Exception:  # noqa: BLE001 - malformed: array.numpy() raises its own error
        return None
    if fortran or dtype.hasobject or dtype.fields is not None or stream.read(1):
        return None
    return dtype, tuple(int(n) for n in shape)


def serialized_size(content: RecordDict) -> int:
    """Bytes of ``content`` serialised as Flower sends it (its protobuf ``RecordDict``).

    Exactly ``recorddict_to_proto(content).ByteSize()``, without building the protobuf
    message on every call (~90 us for a DP reply of the digits MLP: the server measures
    every reply). A ``RecordDict`` message is only its repeated ``items``, so its size
    is the sum of one-item messages' sizes, and an item's size depends only on what its
    wire format spells out: an array record's on its key and each array's name, dtype,
    shape, stype and byte count (never the bytes themselves); a metric or config
    record's on its keys, each value's type, ints' values (varints), strings' and
    bytes' lengths, and lists' elements alike (doubles and bools have fixed sizes).
    Each item's size is computed once per such signature.
    """
    total = 0
    for key, record in content.items():
        if isinstance(record, ArrayRecord):
            signature: tuple[Any, ...] | None = tuple(
                (name, array.dtype, tuple(array.shape), array.stype, len(array.data))
                for name, array in record.items()
            )
        else:
            signature = _values_signature(record)
        cache_key = (type(record), key, signature)
        size = _ITEM_SIZES.get(cache_key) if signature is not None else None
        if size is None:
            size = recorddict_to_proto(RecordDict({key: record})).ByteSize()
            if signature is not None and len(_ITEM_SIZES) < _MAX_ITEM_SIZES:
                _ITEM_SIZES[cache_key] = size
        total += size
    return total


_ITEM_SIZES: dict[tuple[Any, ...], int] = {}  # see serialized_size
_MAX_ITEM_SIZES = 4096


def _values_signature(record: Any) -> tuple[Any, ...] | None:
    """What the serialised size of a metric or config record depends on (None: unsure)."""
    items = []
    for key, value in record.items():
        shape = _value_signature(value)
        if shape is None:
            return None
        items.append((key, shape))
    return tuple(items)


def _value_signature(value: Any) -> tuple[Any, ...] | None:
    kind = type(value)
    if kind is float or kind is bool:
        return (kind,)
    if kind is int:
        return (kind, value)
    if kind is str:
        return (kind, len(value.encode()))
    if kind is bytes:
        return (kind, len(value))
    if kind is list:
        shapes = [_value_signature(item) for item in value]
        return None if any(s is None for s in shapes) else (kind, tuple(shapes))
    return None
