"""Example custom data, in every form fedmodel reads, made from scikit-learn's digits.

``python -m simulations.examples.custom_data --out my-data`` writes (README, "Use your
own data", runs exactly these)::

    my-data/
      clients/site-{0,1,2}.npz    one .npz per client (x [N, 1, 8, 8] float32, y int)
      test.npz                    the held-out test split, for run-config test-data
      digits.csv                  one table: columns p0..p63 and the label column "digit"
      images/site-{0,1,2}/<class>/<n>.png   one image folder per client (8x8 grayscale)
      images-test/<class>/<n>.png           the test split as an image folder
      arrays/x.npy, arrays/y.npy  a NumPy folder (read on demand when large)

and ``simulations.examples.custom_data:digits`` is a Python loader returning the
``(train, test)`` pair of torch datasets. The train/test split is the one of the
built-in ``digits`` dataset (stratified 80/20, seed 0).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from torch.utils.data import TensorDataset

from fedmodel.data.digits import load_digits_splits
from fedmodel.data.partitioning import iid_partitions

NUM_SITES = 3


def digits() -> tuple[TensorDataset, TensorDataset]:
    """A Python loader: the digits' (train, test) pair, pixels in [0, 1], shape (1, 8, 8)."""
    splits = load_digits_splits(seed=0)
    assert splits.test is not None
    return splits.train, splits.test


def write_examples(out: Path) -> None:
    """Write every example form under ``out`` (see the module docstring)."""
    train, test = digits()
    x, y = (t.numpy() for t in train.tensors)
    x_test, y_test = (t.numpy() for t in test.tensors)
    sites = iid_partitions(len(y), num_partitions=NUM_SITES, seed=0)

    (out / "clients").mkdir(parents=True, exist_ok=True)
    for site, index in enumerate(sites):
        np.savez_compressed(out / "clients" / f"site-{site}.npz", x=x[index], y=y[index])
    np.savez_compressed(out / "test.npz", x=x_test, y=y_test)

    with open(out / "digits.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([f"p{i}" for i in range(64)] + ["digit"])
        for features, label in zip(x.reshape(len(x), -1), y, strict=True):
            writer.writerow([f"{v:.4g}" for v in features] + [int(label)])

    for site, index in enumerate(sites):
        _write_images(out / "images" / f"site-{site}", x[index], y[index])
    _write_images(out / "images-test", x_test, y_test)

    (out / "arrays").mkdir(parents=True, exist_ok=True)
    np.save(out / "arrays" / "x.npy", x)
    np.save(out / "arrays" / "y.npy", y)


def _write_images(folder: Path, x: np.ndarray, y: np.ndarray) -> None:
    from PIL import Image

    for label in range(10):  # every class folder, even if empty: class ids = sorted names
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
    for n, (image, label) in enumerate(zip(x, y, strict=True)):
        pixels = np.round(image[0] * 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / str(int(label)) / f"{n}.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder to write the examples into")
    out = Path(parser.parse_args(argv).out)
    write_examples(out)
    print(f"wrote example data to {out}")


if __name__ == "__main__":
    main()
