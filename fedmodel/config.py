"""The run configuration: every key, its type, its allowed range, validated up front.

Flower passes the run config as a flat mapping with kebab-case keys
(``[tool.flwr.app.config]`` in ``pyproject.toml``, overridden by ``--run-config``).
:class:`RunConfig` is that mapping as a validated dataclass. It is built before any
data is loaded or any file is written, so a bad value fails fast with a message that
names the key, the value and the allowed range.

The keys that name a registered thing (``model``, ``dataset``, ``partitioner``,
``accountant``, ``grad-sample-mode``) take their allowed values from the registries of
the packages that define those things (:class:`Choices`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields
from typing import Any, Protocol

from fedmodel.registry import Registry

IMAGE_MODES = ("L", "RGB")
UPDATE_NORM_POLICIES = ("reject", "clip")
UPDATE_COMPRESSIONS = ("none", "int8", "topk")
BYZANTINE_ATTACKS = ("sign-flip", "scale", "gaussian", "nan", "label-flip")
# The strategy parameters (fedmodel.strategies.STRATEGY_KEYS, checked equal by a test).
STRATEGY_PARAMETERS = (
    "beta-1",
    "beta-2",
    "num-malicious-nodes",
    "num-nodes-to-select",
    "proximal-mu",
    "q-fair",
    "server-learning-rate",
    "server-momentum",
    "tau",
    "trim-beta",
)


class ConfigError(ValueError):
    """A run-config value is missing, of the wrong type or out of range."""


class DatasetTraits(Protocol):
    """What the run config reads of a registered dataset (``fedmodel.data.datasets``)."""

    @property
    def own_data(self) -> bool: ...

    @property
    def partitioned(self) -> bool: ...

    @property
    def heterogeneity(self) -> str: ...


@dataclass(frozen=True)
class Choices:
    """The allowed values of the run-config keys that name a registered thing.

    The registries belong to the packages that define the things (``fedmodel.models``,
    ``fedmodel.data``, ``fedmodel.privacy``, ``fedmodel.training``). Those import this
    module, so this module cannot import them (``lint-imports`` forbids import cycles
    between fedmodel's packages): ``fedmodel/__init__.py``, which Python runs before any
    fedmodel module, hands them in with :func:`use_choices`. Registries are kept, not
    copied: a name registered later is allowed from then on.
    """

    model: Collection[str]
    dataset: Registry[Any]  # of DatasetTraits
    partitioner: Collection[str]
    accountant: Collection[str]
    grad_sample_mode: Collection[str]
    strategy: Registry[Any]  # of fedmodel.strategies.StrategySpec


_choices: Choices | None = None


def use_choices(choices: Choices) -> None:
    """Validate the run-config keys that name registered things against ``choices``."""
    global _choices
    _choices = choices


def _registered() -> Choices:
    if _choices is None:
        raise RuntimeError("fedmodel/__init__.py has not handed the registries to the run config")
    return _choices


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
    # Aggregation (README, "Strategies"): Flower's strategies by name and their
    # parameters; 0 for server-learning-rate, tau, beta-1, beta-2 is the strategy's own
    # default. A parameter set for a strategy that does not read it is an error.
    strategy: str = "fedavg"
    proximal_mu: float = 0.0
    server_learning_rate: float = 0.0
    server_momentum: float = 0.0
    tau: float = 0.0
    beta_1: float = 0.0
    beta_2: float = 0.0
    trim_beta: float = 0.2
    num_malicious_nodes: int = 0
    num_nodes_to_select: int = 1
    q_fair: float = 0.1
    # Update validation (README, "Robustness"): 0 = no bound on an update's L2 norm.
    max_update_norm: float = 0.0
    update_norm_policy: str = "reject"
    # Simulation only (never read by the ClientApp a deployment runs): misbehaving clients.
    byzantine_fraction: float = 0.0
    byzantine_attack: str = "sign-flip"
    # Checkpoints (README, "Checkpoint and resume"): every N rounds (0: never); a model
    # to start from.
    checkpoint_every: int = 1
    initial_model: str = ""
    resume: bool = False  # continue the run in run-dir from its checkpoint
    # Communication (README, "Compressed updates"): what a client sends of its update.
    update_compression: str = "none"
    topk_fraction: float = 0.1
    tensorboard: bool = False  # event files in the run folder (extra: ".[tensorboard]")

    def __post_init__(self) -> None:
        # TOML and the CLI give hidden-sizes as 64, "64,64" or [64, 64]: kept as the
        # comma-separated string, the form Flower's run config carries.
        object.__setattr__(self, "hidden_sizes", _sizes_text(self.hidden_sizes))
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
        choices = _registered()
        _check_choice("model", self.model, choices.model)
        _check_range(
            "hidden_sizes",
            self.hidden_sizes,
            "a comma-separated list of positive integers, e.g. '128,64'",
            _parse_sizes(self.hidden_sizes) is not None,
        )
        _check_choice("dataset", self.dataset, choices.dataset)
        dataset: DatasetTraits = choices.dataset.get(self.dataset)
        own_data = " or ".join(
            repr(name) for name in choices.dataset if choices.dataset.get(name).own_data
        )
        for name in ("data_path", "test_data"):
            _check_range(
                name,
                getattr(self, name),
                f"empty unless dataset = {own_data}",
                not getattr(self, name) or dataset.own_data,
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
            not (self.dp and dataset.own_data and self.num_classes == 0),
        )
        _check_range("y_key", self.y_key, "different from x-key", self.y_key != self.x_key)
        _check_choice("image_mode", self.image_mode, IMAGE_MODES)
        _check_range(
            "image_size",
            self.image_size,
            "'' (keep) or WIDTHxHEIGHT or one side, e.g. '28x28' or '28'",
            self.image_size == "" or _parse_image_size(self.image_size) is not None,
        )
        _check_choice("partitioner", self.partitioner, choices.partitioner)
        _check_range("dirichlet_alpha", self.dirichlet_alpha, "> 0", self.dirichlet_alpha > 0)
        _check_range(
            "shards_per_client", self.shards_per_client, ">= 1", self.shards_per_client >= 1
        )
        _check_range("synthetic_alpha", self.synthetic_alpha, ">= 0", self.synthetic_alpha >= 0)
        _check_range("synthetic_beta", self.synthetic_beta, ">= 0", self.synthetic_beta >= 0)
        _check_range(
            "partitioner",
            self.partitioner,
            f"'iid' for dataset {self.dataset!r} (its clients are generated apart; "
            f"{dataset.heterogeneity})",
            dataset.partitioned or self.partitioner == "iid",
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
        _check_choice("accountant", self.accountant, choices.accountant)
        _check_choice("grad_sample_mode", self.grad_sample_mode, choices.grad_sample_mode)
        _check_range(
            "min_train_replies", self.min_train_replies, ">= 1", self.min_train_replies >= 1
        )
        _check_range("round_timeout", self.round_timeout, "> 0 seconds", self.round_timeout > 0)
        self._check_aggregation(choices)

    def _check_aggregation(self, choices: Choices) -> None:
        _check_choice("strategy", self.strategy, choices.strategy)
        spec = choices.strategy.get(self.strategy)
        defaults = {f.name: f.default for f in fields(self)}
        for key in STRATEGY_PARAMETERS:
            name = key.replace("-", "_")
            if getattr(self, name) != defaults[name] and key not in spec.reads:
                reads = ", ".join(spec.reads) or "no parameters"
                raise ConfigError(
                    f"run-config key '{key}' = {getattr(self, name)!r} is not read by strategy "
                    f"{self.strategy!r} (it reads {reads}); remove it or choose a strategy "
                    "that uses it"
                )
        _check_range(
            "strategy",
            self.strategy,
            "a strategy that does not need the clients' training loss under DP (the loss is "
            "a noise-free statistic of their records; set dp = false to use it)",
            not (self.dp and spec.needs_train_loss),
        )
        for name in ("proximal_mu", "server_learning_rate", "server_momentum", "tau"):
            _check_range(name, getattr(self, name), ">= 0", getattr(self, name) >= 0)
        for name in ("beta_1", "beta_2", "server_momentum"):
            _check_range(name, getattr(self, name), "in [0, 1)", 0 <= getattr(self, name) < 1)
        _check_range("trim_beta", self.trim_beta, "in (0, 0.5)", 0 < self.trim_beta < 0.5)
        _check_range(
            "num_malicious_nodes", self.num_malicious_nodes, ">= 0", self.num_malicious_nodes >= 0
        )
        _check_range(
            "num_nodes_to_select", self.num_nodes_to_select, ">= 1", self.num_nodes_to_select >= 1
        )
        _check_range("q_fair", self.q_fair, ">= 0", self.q_fair >= 0)
        _check_range(
            "max_update_norm", self.max_update_norm, ">= 0 (0: no bound)", self.max_update_norm >= 0
        )
        _check_choice("update_norm_policy", self.update_norm_policy, UPDATE_NORM_POLICIES)
        _check_range(
            "byzantine_fraction", self.byzantine_fraction, "in [0, 1)",
            0 <= self.byzantine_fraction < 1,
        )
        _check_choice("byzantine_attack", self.byzantine_attack, BYZANTINE_ATTACKS)
        _check_range(
            "checkpoint_every", self.checkpoint_every, ">= 0 (0: never)", self.checkpoint_every >= 0
        )
        _check_choice("update_compression", self.update_compression, UPDATE_COMPRESSIONS)
        _check_range(
            "byzantine_fraction", self.byzantine_fraction,
            "0 with update-compression (the simulated attacks corrupt uncompressed weights)",
            self.byzantine_fraction == 0 or self.update_compression == "none",
        )
        _check_range(
            "topk_fraction", self.topk_fraction, "in (0, 1]", 0 < self.topk_fraction <= 1
        )
        _check_range(
            "topk_fraction", self.topk_fraction, "left at its default unless update-compression "
            "= 'topk'", self.update_compression == "topk" or self.topk_fraction == 0.1,
        )
        _check_range(
            "resume", self.resume, "used with a run-dir to continue",
            not self.resume or bool(self.run_dir),
        )

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
                keys = sorted(_kebab(n) for n in known)
                near = difflib.get_close_matches(_kebab(name), keys, n=1)
                hint = f"did you mean '{near[0]}'? " if near else ""
                raise ConfigError(
                    f"unknown run-config key '{key}'; {hint}known keys: {', '.join(keys)}"
                )
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


def _sizes_text(value: Any) -> Any:
    """``64`` and ``[64, 64]`` as ``"64"`` and ``"64,64"``; anything else unchanged."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list | tuple):
        # Non-integers keep their repr, which the range check then refuses.
        return ",".join(
            str(v) if isinstance(v, int) and not isinstance(v, bool) else repr(v) for v in value
        )
    return value


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


def _check_choice(name: str, value: str, choices: Collection[str]) -> None:
    if value not in choices:
        raise ConfigError(
            f"run-config key '{_kebab(name)}' = {value!r} is not known: must be one of "
            + ", ".join(repr(c) for c in choices)
        )
