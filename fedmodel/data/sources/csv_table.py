"""A CSV table: a header row, a label column (run-config ``label-column``), numeric features.

Comma-separated, UTF-8. Every column other than the label column is a feature, in file
order. The table is read into memory; for data that does not fit, use a NumPy folder.
Errors name the file, the line (the header is line 1) and the column; their public text
(:class:`DataError`) leaves out the cell.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from fedmodel.data.sources.arrays import labelled_from_arrays
from fedmodel.data.sources.base import DataOptions, LabelledData
from fedmodel.data.sources.validation import TRAINING_DTYPE, DataError, fits_training_dtype


def load_csv(path: Path, *, options: DataOptions) -> tuple[LabelledData, tuple[int, ...]]:
    """Features and labels of the table at ``path``."""
    reader = None
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            return _parse(reader, path=path, options=options)
    except UnicodeDecodeError as error:
        # The codec's message quotes the offending bytes; its reason does not.
        raise DataError(
            f"{path}: not UTF-8 text ({error})", public=f"{path}: not UTF-8 text ({error.reason})"
        ) from error
    except csv.Error as error:
        line = f", line {reader.line_num}" if reader is not None else ""
        raise DataError(
            f"{path}: malformed CSV: {error}", public=f"{path}{line}: malformed CSV"
        ) from error
    except OSError as error:
        raise DataError(
            f"{path}: cannot read: {error}",
            public=f"{path}: cannot read: {type(error).__name__}",
        ) from error


def _parse(reader, *, path: Path, options: DataOptions) -> tuple[LabelledData, tuple[int, ...]]:
    header = next(reader, None)
    if not header:
        raise DataError(f"{path}: is empty; expected a header row naming the columns")
    header = [name.strip() for name in header]
    if options.label_column not in header:
        # Without the label column, line 1 may well be a data row, not a header: the
        # public text gives the number of its fields, not their text.
        raise DataError(
            f"{path}: no column {options.label_column!r} (columns: {header}); set run-config "
            "'label-column' to the name of the label column",
            public=f"{path}: no column {options.label_column!r} in line 1 ({len(header)} "
            "fields); set run-config 'label-column' to the name of the label column",
        )
    label_index = header.index(options.label_column)
    feature_names = [name for i, name in enumerate(header) if i != label_index]
    if not feature_names:
        raise DataError(f"{path}: has no feature columns besides {options.label_column!r}")
    rows: list[list[float]] = []
    labels: list[int] = []
    for cells in reader:
        if not cells or all(not cell.strip() for cell in cells):
            continue  # blank line
        where = f"{path}, line {reader.line_num}"
        if len(cells) != len(header):
            raise DataError(f"{where}: {len(cells)} fields, but the header has {len(header)}")
        label_cell = cells[label_index].strip()
        labels.append(_label(label_cell, where=where, options=options))
        features = []
        for name, cell in zip(
            feature_names, cells[:label_index] + cells[label_index + 1 :], strict=True
        ):
            try:
                value = float(cell)
            except ValueError:
                raise DataError(
                    f"{where}, column {name!r}: {cell.strip()!r} is not a number",
                    public=f"{where}, column {name!r}: not a number",
                ) from None
            if not math.isfinite(value):
                raise DataError(
                    f"{where}, column {name!r}: {value} (features must be finite)",
                    public=f"{where}, column {name!r}: a non-finite value (features must be "
                    "finite)",
                )
            if not fits_training_dtype(value):
                raise DataError(
                    f"{where}, column {name!r}: {value} is beyond the range of "
                    f"{TRAINING_DTYPE}, the dtype features are trained in; rescale the features",
                    public=f"{where}, column {name!r}: a value beyond the range of "
                    f"{TRAINING_DTYPE}, the dtype features are trained in; rescale the features",
                )
            features.append(value)
        rows.append(features)
    if not rows:
        raise DataError(f"{path}: the dataset is empty (a header but no data rows)")
    x = np.asarray(rows, dtype=np.float32)
    return labelled_from_arrays(
        x, np.asarray(labels, dtype=np.int64), origin=str(path), num_classes=options.num_classes
    )


def _label(cell: str, *, where: str, options: DataOptions) -> int:
    column = f"{where}, column {options.label_column!r}"
    not_integer = f"{column}: the label is not an integer"
    try:
        value = float(cell)
    except ValueError:
        raise DataError(f"{column}: label {cell!r} is not an integer", public=not_integer) from None
    if not math.isfinite(value) or not value.is_integer():
        raise DataError(f"{column}: label {cell!r} is not an integer", public=not_integer)
    label = int(value)
    if label < 0 or (options.num_classes and label >= options.num_classes):
        allowed = f"0..{options.num_classes - 1}" if options.num_classes else ">= 0"
        raise DataError(
            f"{column}: label {label} is outside {allowed}",
            public=f"{column}: the label is outside {allowed}",
        )
    return label
