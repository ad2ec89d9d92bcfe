"""scikit-learn's handwritten digits: 1,797 8x8 images, 10 classes, shipped offline."""

from __future__ import annotations

from fedmodel.data.splits import DatasetSplits, tensor_dataset

TEST_FRACTION = 0.2


def load_digits_splits(*, seed: int) -> DatasetSplits:
    """Stratified 80/20 train/test split of the digits, fixed by ``seed``.

    Pixels (0..16) are scaled to [0, 1]; each example has shape ``(1, 8, 8)``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).reshape(-1, 1, 8, 8)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=TEST_FRACTION, stratify=digits.target, random_state=seed
    )
    return DatasetSplits(
        train=tensor_dataset(x_train, y_train),
        test=tensor_dataset(x_test, y_test),
        num_classes=10,
        input_shape=(1, 8, 8),
    )
