"""The run configuration: every key, its type, its allowed range, validated up front.

Flower passes the run config as a flat mapping with kebab-case keys
(``[tool.flwr.app.config]`` in ``pyproject.toml``, overridden by ``--run-config``).
:class:`RunConfig` is that mapping as a validated dataclass. It is built before any
data is loaded or any file is written, so a bad value fails fast with a message that
names the key, the value and the allowed range.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

MODELS = ("mlp", "cnn")
DATASETS = ("digits", "mnist", "fashion-mnist", "custom", "synthetic")
PARTITIONERS = ("iid", "dirichlet", "shards")
ACCOUNTANTS = ("rdp", "prv")  # GDP: see fedmodel/privacy/ledger.py
GRAD_SAMPLE_MODES = ("hooks", "ew", "functorch", "ghost")
IMAGE_MODES = ("L", "RGB")


class ConfigError(ValueError):
    """A run-config value is missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class RunConfig:
    """Validated run configuration (field ``foo_bar`` is run-config key ``foo-bar``).

    The defaults are those of ``[tool.flwr.app.config]`` in ``pyproject.toml`` (a
    test keeps the two equal).
    """

    num_server_rounds: int = 40
    fraction_train: float = 1.0
    fraction_evaluate: float = 0.0
    local_epochs: int = 1
    batch_size: int = 64
    learning_rate: float = 1.0
    momentum: float = 0.0
    model: str = "mlp"
    hidden_sizes: str = "64"
    dataset: str = "digits"
    data_dir: str = ""
    # dataset = "custom" (README, "Use your own data"): where the data is and how to read it.
    data_path: str = ""
    test_data: str = ""
    num_classes: int = 0
    x_key: str = "x"
    y_key: str = "y"
    label_column: str = "label"
    image_mode: str = "L"
    image_size: str = ""
    partitioner: str = "iid"
    dirichlet_alpha: float = 0.5
    shards_per_client: int = 2
    # dataset = "synthetic": Synthetic(alpha, beta) of FedProx (fedmodel/data/synthetic.py).
    synthetic_alpha: float = 1.0
    synthetic_beta: float = 1.0
    seed: int = 0
    dp: bool = True
    noise_multiplier: float = 1.5
    target_epsilon: float = 8.0
    max_grad_norm: float = 2.0
    delta: float = 1e-5
    accountant: str = "rdp"
    grad_sample_mode: str = "ghost"  # fastest correct mode (simulations/benchmarks/dp_cost.py)
    run_dir: str = ""
    # Faults (README, "Deploy"): a round ends when every sampled node replied or after
    # round-timeout seconds; with fewer than min-train-replies updates the model is kept.
    min_train_replies: int = 1
    round_timeout: float = 3600.0

    def __post_init__(self) -> None:
        for field in fields(self):
            _check_type(field.name, getattr(self, field.name), field.type)
        _check_range(
            "num_server_rounds", self.num_server_rounds, ">= 1", self.num_server_rounds >= 1
        )
        _check_range(
            "fraction_train", self.fraction_train, "in (0, 1]", 0 < self.fraction_train <= 1
        )
        _check_range(
            "fraction_evaluate",
            self.fraction_evaluate,
            "in [0, 1]",
            0 <= self.fraction_evaluate <= 1,
        )
        _check_range("local_epochs", self.local_epochs, ">= 1", self.local_epochs >= 1)
        _check_range("batch_size", self.batch_size, ">= 1", self.batch_size >= 1)
        _check_range("learning_rate", self.learning_rate, "> 0", self.learning_rate > 0)
        _check_range("momentum", self.momentum, "in [0, 1)", 0 <= self.momentum < 1)
        _check_choice("model", self.model, MODELS)
        _check_range(
            "hidden_sizes",
            self.hidden_sizes,
            "a comma-separated list of positive integers, e.g. '128,64'",
            _parse_sizes(self.hidden_sizes) is not None,
        )
        _check_choice("dataset", self.dataset, DATASETS)
        for name in ("data_path", "test_data"):
            _check_range(
                name,
                getattr(self, name),
                "empty unless dataset = 'custom'",
                not getattr(self, name) or self.dataset == "custom",
            )
        _check_range(
            "num_classes",
            self.num_classes,
            ">= 2 (or 0 to infer it from the data)",
            self.num_classes == 0 or self.num_classes >= 2,
        )
        for name in ("x_key", "y_key", "label_column"):
            _check_range(name, getattr(self, name), "a non-empty name", bool(getattr(self, name)))
        _check_range(
            "num_classes",
            self.num_classes,
            "set (>= 2) for custom data under DP: inferred from the labels it would reveal "
            "whether a record with the largest label exists",
            not (self.dp and self.dataset == "custom" and self.num_classes == 0),
        )
        _check_range("y_key", self.y_key, "different from x-key", self.y_key != self.x_key)
        _check_choice("image_mode", self.image_mode, IMAGE_MODES)
        _check_range(
            "image_size",
            self.image_size,
            "'' (keep) or WIDTHxHEIGHT or one side, e.g. '28x28' or '28'",
            self.image_size == "" or _parse_image_size(self.image_size) is not None,
        )
        _check_choice("partitioner", self.partitioner, PARTITIONERS)
        _check_range("dirichlet_alpha", self.dirichlet_alpha, "> 0", self.dirichlet_alpha > 0)
        _check_range(
            "shards_per_client", self.shards_per_client, ">= 1", self.shards_per_client >= 1
        )
        _check_range("synthetic_alpha", self.synthetic_alpha, ">= 0", self.synthetic_alpha >= 0)
        _check_range("synthetic_beta", self.synthetic_beta, ">= 0", self.synthetic_beta >= 0)
        _check_range(
            "partitioner",
            self.partitioner,
            "'iid' for dataset 'synthetic' (its clients are generated apart; "
            "set synthetic-alpha / synthetic-beta for heterogeneity)",
            self.dataset != "synthetic" or self.partitioner == "iid",
        )
        _check_range("seed", self.seed, ">= 0", self.seed >= 0)
        _check_range("noise_multiplier", self.noise_multiplier, ">= 0", self.noise_multiplier >= 0)
        _check_range(
            "target_epsilon",
            self.target_epsilon,
            "> 0 (or 0 to use noise-multiplier)",
            self.target_epsilon >= 0,
        )
        _check_range("max_grad_norm", self.max_grad_norm, "> 0", self.max_grad_norm > 0)
        _check_range("delta", self.delta, "in (0, 1)", 0 < self.delta < 1)
        _check_choice("accountant", self.accountant, ACCOUNTANTS)
        _check_choice("grad_sample_mode", self.grad_sample_mode, GRAD_SAMPLE_MODES)
        _check_range(
            "min_train_replies", self.min_train_replies, ">= 1", self.min_train_replies >= 1
        )
        _check_range("round_timeout", self.round_timeout, "> 0 seconds", self.round_timeout > 0)

    @property
    def hidden_layer_sizes(self) -> tuple[int, ...]:
        """``hidden-sizes`` parsed into a tuple of ints."""
        sizes = _parse_sizes(self.hidden_sizes)
        assert sizes is not None  # validated in __post_init__
        return sizes

    @property
    def image_size_pixels(self) -> tuple[int, int] | None:
        """``image-size`` as ``(width, height)``, or None to keep each image's size."""
        return _parse_image_size(self.image_size) if self.image_size else None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from a run-config mapping with kebab-case keys.

        Missing keys take their defaults; an unknown key is an error (a typo would
        otherwise silently run with the default).
        """
        known = {field.name for field in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                allowed = ", ".join(sorted(_kebab(n) for n in known))
                raise ConfigError(f"unknown run-config key '{key}'; known keys: {allowed}")
            kwargs[name] = value
        return cls(**kwargs)

    def to_mapping(self) -> dict[str, Any]:
        """The config as a flat mapping with kebab-case keys (what Flower passes around)."""
        return {_kebab(k): v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _parse_sizes(text: str) -> tuple[int, ...] | None:
    if not isinstance(text, str):
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        return None
    return tuple(int(p) for p in parts)


def _parse_image_size(text: str) -> tuple[int, int] | None:
    parts = text.lower().split("x")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def _check_type(name: str, value: Any, annotation: Any) -> None:
    expected = {"int": int, "float": float, "str": str, "bool": bool}[str(annotation)]
    ok = isinstance(value, expected)
    if expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        # TOML and the CLI give integers for whole numbers: accept them for floats.
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
    if not ok:
        raise ConfigError(
            f"run-config key '{_kebab(name)}' = {value!r} has type {type(value).__name__}; "
            f"expected {expected.__name__}" + (" (finite)" if expected is float else "")
        )


def _check_range(name: str, value: Any, allowed: str, ok: bool) -> None:
    if not ok:
        raise ConfigError(
            f"run-config key '{_kebab(name)}' = {value!r} is out of range: must be {allowed}"
        )


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(
            f"run-config key '{_kebab(name)}' = {value!r} is not known: must be one of "
            + ", ".join(repr(c) for c in choices)
        )
