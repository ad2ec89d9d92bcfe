"""The federation agrees on one model input; test set and late clients must fit it."""

import numpy as np
import pytest

from fedmodel.data.sources import (
    DataDescription,
    DataError,
    DataOptions,
    agree,
    check_fits,
    check_test_set,
    load_source,
)

OPTIONS = DataOptions()
RNG = np.random.default_rng(0)
X = RNG.random((40, 2, 3, 3), dtype=np.float32)  # 40 examples of shape (2, 3, 3)
Y = np.arange(40) % 4  # classes 0..3


def _description(shape=(1, 8, 8), classes=10, names=(), n=100):
    return DataDescription(input_shape=shape, num_classes=classes, num_examples=n,
                           class_names=names)


def test_agree_takes_the_largest_class_count_and_names_a_client_with_another_shape():
    federation = agree({"a": _description(classes=7), "b": _description(classes=10)})
    assert federation.input_shape == (1, 8, 8) and federation.num_classes == 10
    assert agree({"a": _description(classes=3)}, num_classes=10).num_classes == 10
    with pytest.raises(DataError, match=r"node 3 \(c.npz\): examples have shape \(64,\) but the "
                                        r"other clients' have \(1, 8, 8\)"):
        agree({"node 1": _description(), "node 2": _description(),
               "node 3 (c.npz)": _description(shape=(64,))})
    with pytest.raises(DataError, match="b: class folders \\['cat'\\] differ from the other"):
        agree({"a": _description(classes=2, names=("cat", "dog")),
               "c": _description(classes=2, names=("cat", "dog")),
               "b": _description(classes=1, names=("cat",))})
    with pytest.raises(DataError, match="need at least 2 classes"):
        agree({"a": _description(classes=1)})
    with pytest.raises(DataError, match="a: has 12 classes but run-config num-classes = 10"):
        agree({"a": _description(classes=12)}, num_classes=10)


def test_test_set_and_late_clients_must_fit_the_agreed_model(tmp_path):
    federation = agree({"a": _description(shape=(2, 3, 3), classes=4)})
    np.savez(tmp_path / "t.npz", x=X, y=Y)
    check_test_set(load_source(str(tmp_path / "t.npz"), options=OPTIONS), federation)
    np.savez(tmp_path / "wide.npz", x=X, y=Y + 1)
    with pytest.raises(DataError, match=r"wide.npz \(test-data\): label 3 is 4, outside the "
                                        r"clients' classes 0..3"):
        check_test_set(load_source(str(tmp_path / "wide.npz"), options=OPTIONS), federation)
    np.savez(tmp_path / "flat.npz", x=X.reshape(40, -1), y=Y)
    flat = load_source(str(tmp_path / "flat.npz"), options=OPTIONS)
    with pytest.raises(DataError, match=r"flat.npz: examples have shape \(18,\) but the "
                                        r"federation's model takes \(2, 3, 3\)"):
        check_fits(flat, federation)

