"""Your own data: NumPy, CSV, image folders and Python loaders, validated before training.

Every source is checked up front; bad input raises :class:`DataError` naming the file
(and row or index) and what is wrong. See README, "Use your own data".
"""

from fedmodel.data.sources.base import DataOptions, LabelledData, SourceData
from fedmodel.data.sources.federation import (
    DataDescription,
    FederationData,
    agree,
    check_fits,
    check_test_set,
)
from fedmodel.data.sources.loading import (
    NODE_DATA_KEY,
    client_source,
    is_pattern,
    load_source,
    load_test_set,
    match_client_paths,
)
from fedmodel.data.sources.python_loader import hold, release
from fedmodel.data.sources.validation import DataError, check_trainable

__all__ = [
    "NODE_DATA_KEY",
    "DataDescription",
    "DataError",
    "DataOptions",
    "FederationData",
    "LabelledData",
    "SourceData",
    "agree",
    "check_fits",
    "check_test_set",
    "check_trainable",
    "client_source",
    "hold",
    "is_pattern",
    "load_source",
    "load_test_set",
    "match_client_paths",
    "release",
]
