"""Every custom data form loads the same examples, labels and shape; clients pick their share."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from fedmodel.config import RunConfig
from fedmodel.data.sources import (
    DataError,
    DataOptions,
    client_source,
    hold,
    load_source,
    load_test_set,
    release,
)
from fedmodel.data.sources import arrays as arrays_module
from fedmodel.data.sources.arrays import ArrayDataset, DiskArray

OPTIONS = DataOptions()
RNG = np.random.default_rng(0)
X = RNG.random((40, 2, 3, 3), dtype=np.float32)  # 40 examples of shape (2, 3, 3)
Y = np.arange(40) % 4  # classes 0..3


def _items(source):
    data = source.train.dataset
    return np.stack([data[i][0].numpy() for i in range(len(data))]), np.array(
        [int(data[i][1]) for i in range(len(data))]
    )


def _same_examples(source, x=X, y=Y):
    got_x, got_y = _items(source)
    return np.allclose(got_x, x.reshape(got_x.shape)) and np.array_equal(got_y, y)


def test_npz_compressed_and_uncompressed_give_the_examples(tmp_path):
    np.savez_compressed(tmp_path / "c.npz", x=X, y=Y)
    np.savez(tmp_path / "u.npz", features=X, target=Y)
    compressed = load_source(str(tmp_path / "c.npz"), options=OPTIONS)
    named_options = DataOptions(x_key="features", y_key="target")
    named = load_source(str(tmp_path / "u.npz"), options=named_options)
    for source in (compressed, named):
        assert source.input_shape == (2, 3, 3) and source.num_classes == 4
        assert _same_examples(source)
        assert source.class_names == () and source.test is None
    assert isinstance(compressed.train.dataset, TensorDataset)


def test_large_npy_folder_and_stored_npz_stay_on_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(arrays_module, "ON_DISK_MIN_BYTES", 1)  # "large" = any size here
    (tmp_path / "folder").mkdir()
    np.save(tmp_path / "folder" / "x.npy", X)
    np.save(tmp_path / "folder" / "y.npy", Y)
    np.savez(tmp_path / "stored.npz", x=X, y=Y)
    for spec in ("folder", "stored.npz"):
        source = load_source(str(tmp_path / spec), options=OPTIONS)
        assert isinstance(source.train.dataset, ArrayDataset)
        assert isinstance(source.train.dataset.x, DiskArray)
        assert _same_examples(source)
        x, y = source.train.dataset[7]
        assert x.dtype == torch.float32 and y.dtype == torch.int64


def test_csv_reads_features_in_column_order_and_the_named_label_column(tmp_path):
    path = tmp_path / "table.csv"
    flat = X.reshape(len(X), -1)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["a", "kind"] + [f"f{i}" for i in range(1, 18)])
        for row, label in zip(flat, Y, strict=True):
            writer.writerow([repr(float(row[0])), int(label)] + [repr(float(v)) for v in row[1:]])
        writer.writerow([])  # a trailing blank line is ignored
    source = load_source(str(path), options=DataOptions(label_column="kind"))
    assert source.input_shape == (18,) and source.num_classes == 4
    assert _same_examples(source, x=flat)


def _write_images(root, images, labels, classes=("cat", "dog")):
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
    for n, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(pixels).save(root / classes[label] / f"{n}.png")


def test_image_folder_classes_are_sorted_folder_names_and_pixels_scale_to_unit(tmp_path):
    images = RNG.integers(0, 256, size=(6, 5, 4, 3), dtype=np.uint8)  # RGB, 5 high, 4 wide
    labels = [0, 1, 0, 1, 1, 0]
    _write_images(tmp_path / "imgs", images, labels, classes=("b-cat", "a-dog")[::-1])
    rgb = load_source(str(tmp_path / "imgs"), options=DataOptions(image_mode="RGB"))
    assert rgb.class_names == ("a-dog", "b-cat") and rgb.num_classes == 2
    assert rgb.input_shape == (3, 5, 4)
    x, y = _items(rgb)
    # a-dog (class 0) holds the images written with label 0, in file-name order
    order = [0, 2, 5, 1, 3, 4]
    assert np.array_equal(y, [0, 0, 0, 1, 1, 1])
    assert np.allclose(x, images[order].transpose(0, 3, 1, 2) / 255.0)
    gray = load_source(str(tmp_path / "imgs"), options=DataOptions(image_size=(8, 2)))
    assert gray.input_shape == (1, 2, 8)  # (channels, height, width) after resizing to 8x2


def test_python_loader_pair_and_generic_dataset(tmp_path, monkeypatch):
    module = tmp_path / "my_loader.py"
    module.write_text(
        "import numpy as np, torch\n"
        "from torch.utils.data import Dataset, TensorDataset\n"
        "class Rows(Dataset):\n"
        "    def __len__(self): return 10\n"
        "    def __getitem__(self, i): return np.full(3, i, dtype=np.float64), i % 3\n"
        "def pair():\n"
        "    return Rows(), TensorDataset(torch.zeros(4, 3), torch.tensor([0, 1, 2, 4]))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    source = load_source("my_loader:pair", options=OPTIONS)
    assert source.input_shape == (3,) and len(source.train) == 10 and len(source.test) == 4
    assert source.num_classes == 5  # the largest label of either split + 1
    x, y = source.train.dataset[4]
    assert x.dtype == torch.float32 and x.tolist() == [4.0, 4.0, 4.0] and int(y) == 1


def test_held_objects_resolve_in_process_until_released():
    name = hold(TensorDataset(torch.as_tensor(X), torch.as_tensor(Y)))
    try:
        assert _same_examples(load_source(name, options=OPTIONS))
    finally:
        release(name)
    with pytest.raises(DataError, match="no dataset object held under this name"):
        load_source(name + "0", options=OPTIONS)


def test_a_rewritten_file_is_read_again(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=X, y=Y)
    assert load_source(str(path), options=OPTIONS).num_classes == 4
    np.savez(path, x=X[:10], y=np.arange(10))
    assert load_source(str(path), options=OPTIONS).num_classes == 10


def _config(**values):
    # Custom data under DP needs a configured class count (classes 0..3 here).
    return RunConfig.from_mapping({"dataset": "custom", "num-classes": 4, **values})


def test_client_source_node_path_pattern_and_partitions(tmp_path):
    (tmp_path / "clients").mkdir()
    for i in range(3):
        np.savez(tmp_path / "clients" / f"c{i}.npz", x=X[i::3], y=Y[i::3])
    np.savez(tmp_path / "all.npz", x=X, y=Y)
    own = client_source(_config(), node_config={"data-path": str(tmp_path / "clients" / "c1.npz")})
    assert _same_examples(own, x=X[1::3], y=Y[1::3])
    pattern = _config(**{"data-path": str(tmp_path / "clients" / "*.npz")})
    second = client_source(pattern, node_config={"partition-id": 2, "num-partitions": 3})
    assert _same_examples(second, x=X[2::3], y=Y[2::3])
    with pytest.raises(DataError, match="matches 3 entries but the federation has 4 clients"):
        client_source(pattern, node_config={"partition-id": 0, "num-partitions": 4})
    shared = _config(**{"data-path": str(tmp_path / "all.npz"), "partitioner": "shards"})
    parts = [client_source(shared, node_config={"partition-id": i, "num-partitions": 4})
             for i in range(4)]
    assert sum(len(p.train) for p in parts) == len(X)
    assert all(p.num_classes == 4 and p.input_shape == (2, 3, 3) for p in parts)
    assert "(partition 3 of 4)" in parts[3].origin
    with pytest.raises(DataError, match="set dataset = \"custom\""):
        client_source(RunConfig(), node_config={"data-path": str(tmp_path / "all.npz")})
    with pytest.raises(DataError, match="node config needs 'partition-id' and 'num-partitions'"):
        client_source(shared, node_config={})


def test_test_set_from_a_loader_pair_is_its_test_split(tmp_path, monkeypatch):
    (tmp_path / "pair_loader.py").write_text(
        "import torch\nfrom torch.utils.data import TensorDataset\n"
        "def pair():\n"
        "    return (TensorDataset(torch.zeros(8, 2), torch.zeros(8, dtype=torch.long)),\n"
        "            TensorDataset(torch.ones(3, 2), torch.ones(3, dtype=torch.long)))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    test = load_test_set(_config(**{"test-data": "pair_loader:pair"}))
    assert len(test.train) == 3 and test.train.labels.tolist() == [1, 1, 1]
    assert load_test_set(_config()) is None
