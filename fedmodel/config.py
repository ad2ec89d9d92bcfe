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
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields
from typing import Any, Protocol

from fedmodel.registry import Registry

IMAGE_MODES = ("L", "RGB")
UPDATE_NORM_POLICIES = ("reject", "clip")
UPDATE_COMPRESSIONS = ("none", "int8", "topk")
BYZANTINE_ATTACKS = ("sign-flip", "scale", "gaussian", "nan", "label-flip")
# User-level DP (fedmodel.privacy.user_level imports them from here).
PRIVACY_UNITS = ("record", "user", "both")
USER_CLIPPINGS = ("fixed", "adaptive")
CLIENT_SAMPLINGS = ("fixed", "poisson")
# Read only under privacy-unit "user" or "both" (client-sampling by any run, and
# clients-per-round by any run that samples its own cohort: user-level or Poisson).
USER_LEVEL_KEYS = ("user_noise_multiplier", "user_clipping_norm", "user_clipping", "max_epsilon")
# Model architecture (fedmodel.models.settings) and local augmentation
# (fedmodel.training.augmentation) choices; those modules import them from here.
ACTIVATIONS = ("relu", "tanh")
POOLINGS = ("max", "avg")
NORMALIZATIONS = ("group", "none")
AUGMENTATIONS = ("none", "crop", "crop-flip", "shift")
# Fixed per-example feature extractors (fedmodel.data.features imports them from here).
FEATURES = ("none", "scattering")
# model = "package.module:factory": the user's own model (fedmodel.models.factory).
MODEL_FACTORY_PATTERN = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
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
    # Model architecture (README, "Models"); the defaults build the historical models.
    conv_channels: str = "16,32"
    kernel_size: int = 3
    pooling: str = "max"
    activation: str = "relu"
    normalization: str = "group"
    fix_model: bool = False  # apply Opacus's ModuleValidator.fix to the model
    # Local training (README, "Augmentation"): per-batch random augmentation, mixup
    # (no DP only) and De et al. 2022's augmentation multiplicity.
    augmentation: str = "none"
    augmentation_multiplicity: int = 1
    mixup_alpha: float = 0.0
    dataset: str = "digits"
    data_dir: str = ""
    # A fixed transform of every example before training (README, "Features"): no privacy cost.
    features: str = "none"
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
    # Where training and evaluation run (README, "GPU"): "auto", "cpu", "cuda", "cuda:N";
    # a deployed node's node-config device wins over it (client/client_app.py).
    device: str = "auto"
    # The batched engine (README, "Batched engine"; simulation only): cohorts in chunks
    # that fit this many MiB (0: the whole cohort at once); torch.compile of its step.
    batched_memory_mb: float = 1024.0
    batched_compile: bool = False
    # Secure aggregation (README, "Secure aggregation"): SecAgg+ (Bell et al. 2020) through
    # Flower's SecAggPlusWorkflow; the server learns only the sum of the sampled updates.
    secure_aggregation: bool = False
    secagg_num_shares: int = 3
    secagg_reconstruction_threshold: int = 2
    # User-level DP (README, "User-level DP"): DP-FedAvg on the server (McMahan et al.
    # 2018), its client sampling and a user-level ε budget that ends the run.
    privacy_unit: str = "record"
    user_noise_multiplier: float = 1.0
    user_clipping_norm: float = 1.0
    user_clipping: str = "fixed"
    clients_per_round: int = 0  # the (expected) cohort; 0: fraction-train of the nodes
    client_sampling: str = "fixed"
    max_epsilon: float = 0.0  # user-level budget; 0: none

    def __post_init__(self) -> None:
        # TOML and the CLI give hidden-sizes as 64, "64,64" or [64, 64]: kept as the
        # comma-separated string, the form Flower's run config carries.
        object.__setattr__(self, "hidden_sizes", _sizes_text(self.hidden_sizes))
        object.__setattr__(self, "conv_channels", _sizes_text(self.conv_channels))
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
        if not MODEL_FACTORY_PATTERN.match(self.model):
            _check_choice("model", self.model, choices.model, also="or 'package.module:factory'")
        _check_range(
            "hidden_sizes",
            self.hidden_sizes,
            "a comma-separated list of positive integers, e.g. '128,64'",
            _parse_sizes(self.hidden_sizes) is not None,
        )
        self._check_model_and_augmentation()
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
        whole = [
            n
            for n in choices.dataset
            if choices.dataset.get(n).partitioned and not choices.dataset.get(n).own_data
        ]
        _check_range(
            "features",
            self.features,
            "'none' unless the dataset is loaded whole and partitioned ("
            + ", ".join(repr(n) for n in whole)
            + "): other datasets' examples are not featurized",
            self.features == "none" or (dataset.partitioned and not dataset.own_data),
        )
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
        _check_device(self.device)
        _check_range(
            "batched_memory_mb",
            self.batched_memory_mb,
            ">= 0 MiB (0: no limit)",
            self.batched_memory_mb >= 0,
        )
        self._check_secure_aggregation()
        self._check_user_level()

    def _check_user_level(self) -> None:
        """``privacy-unit`` and the user-level DP keys (README, "User-level DP")."""
        _check_choice("privacy_unit", self.privacy_unit, PRIVACY_UNITS)
        _check_choice("user_clipping", self.user_clipping, USER_CLIPPINGS)
        _check_choice("client_sampling", self.client_sampling, CLIENT_SAMPLINGS)
        _check_range(
            "user_noise_multiplier",
            self.user_noise_multiplier,
            "> 0",
            self.user_noise_multiplier > 0,
        )
        _check_range(
            "user_clipping_norm", self.user_clipping_norm, "> 0", self.user_clipping_norm > 0
        )
        _check_range(
            "clients_per_round",
            self.clients_per_round,
            ">= 0 (0: fraction-train of the nodes)",
            self.clients_per_round >= 0,
        )
        _check_range("max_epsilon", self.max_epsilon, ">= 0 (0: no budget)", self.max_epsilon >= 0)
        # Clients train with DP-SGD exactly when dp = true: "user" is central DP alone.
        _check_range(
            "privacy_unit",
            self.privacy_unit,
            "'user' only with dp = false (the clients then train without DP-SGD) and 'both' "
            "or 'record' with dp = true",
            (self.privacy_unit == "user") == (not self.dp) or self.privacy_unit == "record",
        )
        if self.privacy_unit == "record":
            defaults = {f.name: f.default for f in fields(self)}
            _check_range(
                "clients_per_round",
                self.clients_per_round,
                "0 unless privacy-unit is 'user' or 'both' or client-sampling = 'poisson' "
                "(otherwise fraction-train sets the cohort)",
                self.clients_per_round == 0 or self.client_sampling == "poisson",
            )
            for name in USER_LEVEL_KEYS:
                if getattr(self, name) != defaults[name]:
                    raise ConfigError(
                        f"run-config key '{_kebab(name)}' = {getattr(self, name)!r} is read "
                        "only under user-level DP: set privacy-unit = 'user' or 'both', or "
                        "remove it"
                    )
            return
        _check_range(
            "user_clipping",
            self.user_clipping,
            "'fixed' with client-sampling = 'poisson' (adaptive clipping divides its noised "
            "clipped count by the cohort's actual size, which Poisson sampling makes private)",
            not (self.user_clipping == "adaptive" and self.client_sampling == "poisson"),
        )
        _check_range(
            "min_train_replies",
            self.min_train_replies,
            "1 under user-level DP (every round releases an aggregate, the noise alone when "
            "no update arrived: skipping a round for a small cohort would depend on who was "
            "sampled and is not covered by the accounted Gaussian mechanism)",
            self.min_train_replies == 1,
        )

    def _check_secure_aggregation(self) -> None:
        """SecAgg+'s parameters, and the keys that need the server to see each update.

        The cohort-dependent checks (shares <= sampled nodes) are the server's
        (``server/secure_aggregation.py``), which knows how many nodes are connected.
        """
        _check_range(
            "secagg_num_shares",
            self.secagg_num_shares,
            ">= 3 (Flower's SecAgg+ minimum)",
            self.secagg_num_shares >= 3,
        )
        _check_range(
            "secagg_reconstruction_threshold",
            self.secagg_reconstruction_threshold,
            f">= 2 and < secagg-num-shares = {self.secagg_num_shares}",
            2 <= self.secagg_reconstruction_threshold < self.secagg_num_shares,
        )
        if not self.secure_aggregation:
            return
        # Under SecAgg+ the server sees only the sum: nothing that reads, weighs or
        # changes one client's update can run (robust strategies, norm bounds, attacks
        # simulated on an update, compressed updates). FedProx aggregates as FedAvg (its
        # proximal term is the clients'); the server-side optimisers (FedAvgM, FedAdam,
        # ...) would need Flower's legacy classes, not wired here.
        needs_updates = {
            "strategy": (self.strategy, ("fedavg", "fedprox")),
            "max-update-norm": (self.max_update_norm, (0.0,)),
            "byzantine-fraction": (self.byzantine_fraction, (0.0,)),
            "update-compression": (self.update_compression, ("none",)),
        }
        for key, (value, allowed) in needs_updates.items():
            if value not in allowed:
                allowed_text = " or ".join(repr(a) for a in allowed)
                raise ConfigError(
                    f"run-config key '{key}' = {value!r} cannot be combined with "
                    f"secure-aggregation = true: the server sees only the sum of the "
                    f"updates, never one update (use {key} = {allowed_text}, or "
                    "secure-aggregation = false)"
                )
        # User-level DP under SecAgg+: each client clips its own update before masking
        # (server/secure_aggregation.py). Adaptive clipping would need each client's
        # clipped bit in the clear, beside its masked vector: not offered.
        privacy_unit = getattr(self, "privacy_unit", "record")
        if privacy_unit != "record" and getattr(self, "user_clipping", "fixed") != "fixed":
            raise ConfigError(
                f"run-config key 'user-clipping' = {self.user_clipping!r} cannot be combined "
                "with secure-aggregation = true: adaptive clipping needs each client's "
                "clipped/unclipped bit, which the server would see outside the masked sum "
                "(use user-clipping = 'fixed')"
            )
        if self.resume:
            raise ConfigError(
                "run-config key 'resume' = true cannot be combined with secure-aggregation "
                "= true: secure-aggregation runs write no checkpoints"
            )
        # Flower's legacy FedAvg samples the cohort (fraction-train) under SecAgg+.
        sampling = {
            "client-sampling": (getattr(self, "client_sampling", "fixed"), "fixed"),
            "clients-per-round": (getattr(self, "clients_per_round", 0), 0),
        }
        for key, (value, allowed) in sampling.items():
            if value != allowed:
                raise ConfigError(
                    f"run-config key '{key}' = {value!r} cannot be combined with "
                    f"secure-aggregation = true: under SecAgg+ a round samples a fixed "
                    f"cohort, fraction-train of the nodes, which secagg-num-shares is checked "
                    f"against before round 1 (a Poisson cohort's size varies and could fall "
                    f"below the shares; use {key} = {allowed!r})"
                )

    def _check_model_and_augmentation(self) -> None:
        _check_range(
            "conv_channels",
            self.conv_channels,
            "a comma-separated list of positive integers, e.g. '32,64'",
            _parse_sizes(self.conv_channels) is not None,
        )
        _check_range(
            "kernel_size",
            self.kernel_size,
            "an odd integer >= 1 ('same' padding)",
            self.kernel_size >= 1 and self.kernel_size % 2 == 1,
        )
        _check_choice("pooling", self.pooling, POOLINGS)
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("normalization", self.normalization, NORMALIZATIONS)
        _check_choice("augmentation", self.augmentation, AUGMENTATIONS)
        _check_range(
            "augmentation_multiplicity",
            self.augmentation_multiplicity,
            ">= 1",
            self.augmentation_multiplicity >= 1,
        )
        _check_range(
            "augmentation_multiplicity",
            self.augmentation_multiplicity,
            "1 with augmentation = 'none' (the K copies would be identical)",
            self.augmentation_multiplicity == 1 or self.augmentation != "none",
        )
        _check_range(
            "augmentation_multiplicity",
            self.augmentation_multiplicity,
            "1 with grad-sample-mode = 'ew' under DP (its per-example gradients cannot be "
            "averaged over the copies; 'ghost', 'hooks' and 'functorch' can)",
            not (self.dp and self.augmentation_multiplicity > 1 and self.grad_sample_mode == "ew"),
        )
        _check_range("mixup_alpha", self.mixup_alpha, ">= 0 (0: off)", self.mixup_alpha >= 0)
        _check_choice("features", self.features, FEATURES)
        _check_range(
            "augmentation",
            self.augmentation,
            "'none' with features other than 'none' (it transforms images, and the model "
            "sees the features of the unaugmented images)",
            self.features == "none" or self.augmentation == "none",
        )
        _check_range(
            "mixup_alpha",
            self.mixup_alpha,
            "0 with dp = true: mixup blends pairs of examples, so one record reaches two "
            "training examples and DP-SGD's record-level per-example sensitivity bound no "
            "longer holds (use augmentation and augmentation-multiplicity under DP)",
            not (self.dp and self.mixup_alpha > 0),
        )

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
            "byzantine_fraction",
            self.byzantine_fraction,
            "in [0, 1)",
            0 <= self.byzantine_fraction < 1,
        )
        _check_choice("byzantine_attack", self.byzantine_attack, BYZANTINE_ATTACKS)
        _check_range(
            "checkpoint_every", self.checkpoint_every, ">= 0 (0: never)", self.checkpoint_every >= 0
        )
        _check_choice("update_compression", self.update_compression, UPDATE_COMPRESSIONS)
        _check_range(
            "byzantine_fraction",
            self.byzantine_fraction,
            "0 with update-compression (the simulated attacks corrupt uncompressed weights)",
            self.byzantine_fraction == 0 or self.update_compression == "none",
        )
        _check_range("topk_fraction", self.topk_fraction, "in (0, 1]", 0 < self.topk_fraction <= 1)
        _check_range(
            "topk_fraction",
            self.topk_fraction,
            "left at its default unless update-compression = 'topk'",
            self.update_compression == "topk" or self.topk_fraction == 0.1,
        )
        _check_range(
            "resume",
            self.resume,
            "used with a run-dir to continue",
            not self.resume or bool(self.run_dir),
        )

    @property
    def hidden_layer_sizes(self) -> tuple[int, ...]:
        """``hidden-sizes`` parsed into a tuple of ints."""
        sizes = _parse_sizes(self.hidden_sizes)
        assert sizes is not None  # validated in __post_init__
        return sizes

    @property
    def conv_channel_sizes(self) -> tuple[int, ...]:
        """``conv-channels`` parsed into a tuple of ints."""
        sizes = _parse_sizes(self.conv_channels)
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


def _check_device(spec: str) -> None:
    """``device``: spelled right, and CUDA present where it names CUDA (before anything runs).

    The same rules as ``fedmodel.training.device.resolve_device`` (a test keeps them
    equal); written here because the training package imports this module, so this one
    cannot import it (``lint-imports``: no cycles between fedmodel's packages).
    """
    _check_range(
        "device",
        spec,
        "'auto', 'cpu', 'cuda' or 'cuda:N' (N = 0, 1, ...)",
        spec in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", spec) is not None,
    )
    if spec in ("auto", "cpu"):
        return
    import torch  # only here: the default device needs no torch to validate

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(spec.partition(":")[2] or 0)
    if index >= count:
        found = (
            f"this machine has {count} CUDA device(s)"
            if count
            else f"this torch {torch.__version__} finds no CUDA device"
            + (" (a CPU-only build)" if torch.version.cuda is None else "")
        )
        raise ConfigError(
            f"run-config key 'device' = {spec!r} is not available: {found}; use 'auto' or "
            "'cpu', or install a CUDA build of torch (README, 'GPU')"
        )


def _check_choice(name: str, value: str, choices: Collection[str], *, also: str = "") -> None:
    if value not in choices:
        raise ConfigError(
            f"run-config key '{_kebab(name)}' = {value!r} is not known: must be one of "
            + ", ".join(repr(c) for c in choices)
            + (f" {also}" if also else "")
        )
