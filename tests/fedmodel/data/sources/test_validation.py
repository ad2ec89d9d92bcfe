"""Checks every source passes before training: a client too small for private training,
features beyond float32 (the training dtype), implausible class counts."""

import re

import numpy as np
import pytest
from torch.utils.data import Dataset

from fedmodel.config import ConfigError
from fedmodel.data.sources import (
    DataDescription,
    DataError,
    DataOptions,
    agree,
    check_trainable,
    load_source,
)
from fedmodel.data.sources import arrays as arrays_module
from fedmodel.data.sources.python_loader import check_dataset
from fedmodel.data.sources.validation import MAX_INFERRED_CLASSES
from fedmodel.privacy.delta import check_delta
from simulations import simulate


def test_a_dataset_too_small_for_the_batch_size_under_dp_is_refused():
    with pytest.raises(DataError, match=re.escape(
        "site.npz: 12 examples is fewer than batch-size 32: under DP the sampling rate "
        "batch-size/N = 2.67 would be above 1"
    )):
        check_trainable(12, batch_size=32, dp=True, delta=1e-5, origin="site.npz")
    with pytest.raises(DataError) as error:
        check_trainable(40, batch_size=32, dp=True, delta=0.1, origin="site.npz")
    # The one δ < 1/N rule (fedmodel.privacy.delta), reported as a DataError of the data.
    with pytest.raises(ConfigError) as rule:
        check_delta(0.1, num_examples=40, where="site.npz")
    assert str(error.value) == error.value.public == str(rule.value)
    assert "'delta' = 0.1 is out of range for site.npz: must be below 1/40" in str(error.value)
    check_trainable(12, batch_size=32, dp=False, delta=1e-5, origin="site.npz")  # no DP: fine
    check_trainable(32, batch_size=32, dp=True, delta=1e-5, origin="site.npz")  # N = B: q = 1


# -- values as training sees them (float32), and class counts inferred from labels -------

X64 = np.random.default_rng(4).random((12, 3))
Y12 = np.arange(12) % 3


def _refused(call, *args, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        call(*args, **kwargs)
    return info.value


def _npz(path, x=X64, y=Y12):
    np.savez(path / "site.npz", x=x, y=y)
    return str(path / "site.npz")


def test_features_finite_as_float64_but_not_as_float32_are_refused_naming_the_example(
    tmp_path, monkeypatch
):
    x = X64.copy()
    x[5, 1] = 1e308
    error = _refused(load_source, _npz(tmp_path, x), options=DataOptions())
    assert error.public == (
        f"{tmp_path}/site.npz['x']: example 5 holds a value beyond the range of float32, the "
        "dtype features are trained in (|x| <= 3.4e+38); rescale the features"
    )
    assert "1e+308" in str(error) and "1e+308" not in error.public
    # Left on disk (read in chunks) and from a Python dataset: the same check.
    monkeypatch.setattr(arrays_module, "ON_DISK_MIN_BYTES", 1)
    (tmp_path / "folder").mkdir()
    np.save(tmp_path / "folder" / "x.npy", x)
    np.save(tmp_path / "folder" / "y.npy", Y12)
    on_disk = _refused(load_source, str(tmp_path / "folder"), options=DataOptions())
    assert "x.npy: example 5 holds a value beyond the range of float32" in on_disk.public
    items = _refused(check_dataset, _Items(x, Y12), origin="loader:load", num_classes=0)
    assert items.public.startswith("loader:load: example 5 holds a value beyond the range")


def test_a_csv_cell_beyond_float32_is_refused_naming_line_and_column(tmp_path):
    (tmp_path / "t.csv").write_text("a,b,label\n0.5,1,0\n2,-1e300,1\n")
    error = _refused(load_source, str(tmp_path / "t.csv"), options=DataOptions())
    assert error.public == (
        f"{tmp_path}/t.csv, line 3, column 'b': a value beyond the range of float32, the "
        "dtype features are trained in; rescale the features"
    )
    assert "-1e+300" in str(error)


def test_a_huge_label_is_refused_before_anything_is_sized_by_it(tmp_path):
    y = Y12.copy()
    y[4] = 1_000_000_000  # inferred: 1e9 classes, a 256 GB output layer for a 64-wide MLP
    error = _refused(load_source, _npz(tmp_path, y=y), options=DataOptions())
    assert error.public == (
        f"{tmp_path}/site.npz: the largest label implies more classes than the 12 examples "
        f"or {MAX_INFERRED_CLASSES} (the most inferred from labels); if the labels are right, "
        "set run-config 'num-classes' to the class count (labels 0..num-classes-1)"
    )
    assert "1000000001" in str(error) and "1000000001" not in error.public
    more_than_examples = Y12.copy()
    more_than_examples[0] = 12  # 13 classes for 12 examples
    _refused(load_source, _npz(tmp_path, y=more_than_examples), options=DataOptions())
    # Configured, the same labels are the configured classes'.
    source = load_source(_npz(tmp_path, y=more_than_examples), options=DataOptions(num_classes=13))
    assert source.num_classes == 13


def test_the_server_does_not_believe_a_client_claiming_a_huge_class_count():
    huge = DataDescription(input_shape=(3,), num_classes=10**9, num_examples=64)
    error = _refused(agree, {"node 7": huge})
    assert error.public.startswith(f"node 7: reports more than {MAX_INFERRED_CLASSES} classes")
    assert agree({"node 7": huge}, num_classes=10**9).num_classes == 10**9  # as configured


@pytest.mark.parametrize(
    ("x", "y"),
    [(np.where(np.arange(36).reshape(12, 3) == 7, 1e308, X64), Y12),
     (X64, np.where(np.arange(12) == 4, 10**9, Y12))],
    ids=["float32-overflow", "huge-label"],
)
def test_simulate_refuses_such_data_and_leaves_no_run_folder(tmp_path, x, y):
    data = _npz(tmp_path, x, y)
    values = {"dataset": "custom", "data-path": data, "dp": False,
              "run-dir": str(tmp_path / "run")}
    with pytest.raises(DataError, match="site.npz"):
        simulate(values, num_clients=2)
    assert not (tmp_path / "run").exists()


class _Items(Dataset):
    """A map-style dataset of numpy items (read one by one by the Python source)."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int):
        return self.x[index], int(self.y[index])
