"""fedmodel.records' array codec: the bytes and values Flower's own Array gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from fedmodel.records import state_dict_to_record, to_array, to_numpy

VALUES = [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.arange(5, dtype=np.int64),
    np.full((), 3.5),
    np.zeros((0, 3), dtype=np.float32),
    np.arange(6.0).reshape(2, 3).T,  # Fortran order: Flower's own path
    np.array([1, 2], dtype=">i4"),
    np.zeros(2, dtype=[("a", "f4")]),
    np.array([True, False]),
    np.arange(6, dtype=np.float16).reshape(2, 3),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: f"{v.dtype}-{v.shape}")
def test_to_array_is_byte_for_byte_flowers_and_to_numpy_reads_it_back(value):
    ours, flowers = to_array(value), Array(value)
    assert (ours.data, ours.dtype, ours.shape, ours.stype) == (
        flowers.data,
        flowers.dtype,
        flowers.shape,
        flowers.stype,
    )
    read, expected = to_numpy(flowers), flowers.numpy()
    assert read.dtype == expected.dtype and read.shape == expected.shape
    assert np.array_equal(read, expected)


def test_a_state_dict_becomes_the_record_flower_builds():
    state = {"w": torch.randn(4, 3), "b": torch.randn(3), "n": torch.tensor(7)}
    ours, flowers = state_dict_to_record(state), ArrayRecord(state)
    assert list(ours) == list(flowers)
    assert all(ours[k].data == flowers[k].data for k in flowers)


def test_a_truncated_or_garbled_array_is_refused_as_np_load_refuses_it():
    good = Array(np.zeros(3, dtype=np.float32))
    truncated = Array(dtype="float32", shape=(3,), stype="numpy.ndarray", data=good.data[:-2])
    with pytest.raises(ValueError):
        to_numpy(truncated)
    garbled = Array(
        dtype="float32",
        shape=(3,),
        stype="numpy.ndarray",
        data=b"\x93NUMPY\x01\x00" + b"\x08\x00{'x': 1}",
    )
    with pytest.raises(ValueError):
        to_numpy(garbled)


def test_the_view_is_read_only():
    view = to_numpy(Array(np.ones(4, dtype=np.float32)))
    with pytest.raises(ValueError):
        view[0] = 2.0


@pytest.mark.parametrize("value", VALUES, ids=lambda v: f"{v.dtype}-{v.shape}")
def test_a_decoded_array_gives_what_flowers_numpy_gives(value):
    """DecodedArray.numpy(): a new writable array equal to np.load's, every layout."""
    from fedmodel.records import DecodedArray, decode_fast

    flowers = Array(value)
    content = decode_fast(RecordDict({"arrays": ArrayRecord({"x": Array(value)})}))
    ours = content["arrays"]["x"]
    assert type(ours) is DecodedArray and isinstance(ours, Array)
    assert (ours.data, ours.dtype, ours.shape, ours.stype) == (
        flowers.data,
        flowers.dtype,
        flowers.shape,
        flowers.stype,
    )
    got, expected = ours.numpy(), flowers.numpy()
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()
    assert got.flags.writeable and got.flags.c_contiguous == expected.flags.c_contiguous
    assert got is not ours.numpy()  # a fresh array each call, as np.load gives


def test_flowers_fedavg_over_decoded_arrays_is_bit_for_bit_the_same():
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    from fedmodel.records import decode_fast

    rng = np.random.default_rng(0)

    def replies():
        out = []
        for i in range(7):
            local = np.random.default_rng(i)
            arrays = {"w": local.standard_normal((5, 3)).astype(np.float32), "b": local.random(3)}
            out.append(
                RecordDict(
                    {
                        "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                        "metrics": MetricRecord({"num-examples": int(rng.integers(1, 100))}),
                    }
                )
            )
        return out

    rng = np.random.default_rng(0)
    plain = aggregate_arrayrecords(replies(), "num-examples")
    rng = np.random.default_rng(0)
    fast = aggregate_arrayrecords([decode_fast(r) for r in replies()], "num-examples")
    assert {k: a.data for k, a in plain.items()} == {k: a.data for k, a in fast.items()}


@pytest.mark.parametrize("value", VALUES, ids=lambda v: f"{v.dtype}-{v.shape}")
def test_to_array_builds_the_object_flower_builds(value):
    """Not only the fields: the whole object state (Flower's change tracking included)."""
    ours, flowers = to_array(value), Array(value)
    assert type(ours) is Array
    assert ours.__dict__ == flowers.__dict__ and list(ours.__dict__) == list(flowers.__dict__)
    assert ours.object_id == flowers.object_id  # Flower's content hash of the deflated object


def test_a_state_dict_record_is_the_object_flower_builds():
    state = {"w": torch.randn(4, 3), "b": torch.randn(3)}
    ours, flowers = state_dict_to_record(state), ArrayRecord(state)
    assert ours.__dict__.keys() == flowers.__dict__.keys()
    assert {k: a.__dict__ for k, a in ours.items()} == {k: a.__dict__ for k, a in flowers.items()}
    assert ours.object_id == flowers.object_id


def test_serialized_size_is_the_protobuf_size():
    from flwr.app import ConfigRecord
    from flwr.common.serde import recorddict_to_proto

    from fedmodel.records import serialized_size

    big = ArrayRecord({"w": to_array(np.zeros((300, 200), dtype=np.float32))})  # 2^18 bytes
    contents = [
        RecordDict(),
        RecordDict({"arrays": state_dict_to_record({"a": torch.zeros(3, 4), "b": torch.ones(7)})}),
        RecordDict(
            {
                "arrays": ArrayRecord({f"layer.{i}": to_array(v) for i, v in enumerate(VALUES)}),
                "metrics": MetricRecord({"num-examples": 10, "loss": 0.5}),
                "privacy": ConfigRecord({"sigmas": [1.0, 2.0], "accountant": "rdp"}),
                "big": big,
            }
        ),
        RecordDict({"empty": ArrayRecord(), "a-long-key" * 20: big}),
    ]
    for content in contents:
        assert serialized_size(content) == recorddict_to_proto(content).ByteSize()
        assert serialized_size(content) == serialized_size(content)  # cached alike


def test_serialized_size_of_metric_and_config_records_follows_their_values():
    from flwr.app import ConfigRecord
    from flwr.common.serde import recorddict_to_proto

    from fedmodel.records import serialized_size

    configs = [
        {"n": 1, "s": "é", "f": 0.0, "b": False, "y": b"", "l": []},
        {"n": 300, "s": "éé", "f": -0.0, "b": True, "y": b"xy", "l": [True]},
        {"n": -(2**40), "s": "", "f": 1e300, "b": True, "y": b"x" * 200, "l": [1, 2**62]},
        {"n": 2**64 - 1, "s": "a" * 300, "f": float("nan"), "b": False, "y": b"", "l": ["a", ""]},
        {"n": 0, "s": "x", "f": 2.5, "b": False, "y": b"", "l": [0.5, 1.5, 2.5]},
        {"n": 0, "s": "x", "f": 2.5, "b": False, "y": b"", "l": [b"", b"abc"]},
    ]
    metrics = [{"a": 1, "b": 0.5}, {"a": 10**12, "b": 0.0}, {"a": [1, 2], "b": [0.5]}, {"a": []}]
    for _ in range(2):  # computed, then read back from the cache
        for values in configs:
            content = RecordDict({"config": ConfigRecord(values)})
            assert serialized_size(content) == recorddict_to_proto(content).ByteSize(), values
        for values in metrics:
            content = RecordDict({"metrics": MetricRecord(values)})
            assert serialized_size(content) == recorddict_to_proto(content).ByteSize(), values


def test_a_decoded_record_dicts_views_are_flowers_views():
    """Same records in the same order, and a change through a view reaches the RecordDict."""
    from flwr.app import ConfigRecord

    from fedmodel.records import DecodedRecordDict, decode_fast

    def content():
        return RecordDict(
            {
                "metrics": MetricRecord({"num-examples": 3}),
                "arrays": ArrayRecord({"w": Array(np.ones(2, dtype=np.float32))}),
                "privacy": ConfigRecord({"client": "a"}),
                "more-metrics": MetricRecord({"steps": 2}),
            }
        )

    plain, fast = content(), decode_fast(content())
    assert type(fast) is DecodedRecordDict
    for view in ("array_records", "metric_records", "config_records"):
        ours, flowers = getattr(fast, view), getattr(plain, view)
        assert type(ours) is type(flowers)
        assert list(ours) == list(flowers)
        assert all(ours[key] is fast[key] for key in ours)
    fast.metric_records["new"] = MetricRecord({"x": 1})
    assert fast["new"] == MetricRecord({"x": 1})
    with pytest.raises(TypeError):
        fast.metric_records["bad"] = ConfigRecord({"x": 1})
    del fast.config_records["privacy"]
    assert "privacy" not in fast
    assert list(fast) == ["metrics", "arrays", "more-metrics", "new"]
