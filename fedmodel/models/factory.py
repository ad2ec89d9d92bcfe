"""Your own model: run-config ``model = "package.module:factory"``.

Every node (server and clients) imports the same factory and calls it with the data's
input shape and class count, so all of them build the same architecture; the weights
come from the server's model each round.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from torch import nn

# "package.module:factory", the entry-point form (as in setuptools' entry points).
from fedmodel.config import MODEL_FACTORY_PATTERN, ConfigError


def is_factory_path(name: str) -> bool:
    """``name`` has the form ``package.module:factory``."""
    return bool(MODEL_FACTORY_PATTERN.match(name))


def build_from_factory(path: str, *, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Import ``package.module:factory`` and return ``factory(input_shape=, num_classes=)``.

    Raises
    ------
    ConfigError
        One line naming run-config key ``model`` and its value: the module cannot be
        imported, has no such attribute, the factory raised, or it returned something
        that is not an ``nn.Module``.
    """
    where = f"run-config key 'model' = {path!r}"
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # any import-time failure of user code is a config error
        raise ConfigError(
            f"{where}: cannot import module {module_name!r} ({type(error).__name__}: {error}); "
            "it must be importable on every node (installed or on PYTHONPATH)"
        ) from error
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ConfigError(f"{where}: module {module_name!r} has no callable {attribute!r}")
    try:
        model = factory(input_shape=tuple(input_shape), num_classes=num_classes)
    except Exception as error:
        raise ConfigError(
            f"{where}: {attribute}(input_shape={tuple(input_shape)}, num_classes={num_classes}) "
            f"raised {type(error).__name__}: {error}"
        ) from error
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"{where}: {attribute} returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model
