"""The privacy a node insists on, whatever the server asks for.

A run's config comes from whoever submits the run, that is, from the server side. A
node's records are protected against that side only if the node itself decides what
it accepts. :class:`NodePolicy` is that decision, read from the node's own node config
(``--node-config`` of a SuperNode, which the server cannot change) and checked before
any record is read for training: a run that asks for less is refused with a
:class:`PolicyRefusal` that names the node-config key, and nothing is trained.

Simulation engines run the nodes for the user who also runs the server, so they mark
their nodes ``simulated`` (node config ``simulated = true``, or the environment variable
:data:`SIMULATED_NODES_ENV` for Flower's Ray engine, whose virtual nodes get no node
config of ours). A simulated node defaults to seeded randomness (bit-for-bit
reproducible runs), allows ``dp = false`` and an in-memory ledger, and reads data
locations from the run config; every default can still be set explicitly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedmodel.privacy.ledger import ACCOUNTANT_NAMES

NOISE_SOURCES = ("secure", "seeded")
SIMULATED_NODES_ENV = "FEDMODEL_SIMULATED_NODES"
POLICY_KEYS = (
    "simulated",
    "noise-source",
    "require-dp",
    "min-noise-multiplier",
    "max-epsilon",
    "allowed-accountants",
    "state-dir",
    "data-id",
)


class PolicyRefusal(ValueError):
    """A run asks for less privacy than this node's policy allows; nothing was trained."""


@dataclass(frozen=True)
class NodePolicy:
    """What one node enforces (node-config key ``foo-bar`` is field ``foo_bar``).

    Parameters
    ----------
    simulated : bool
        The node is run by a simulation engine for the user who also runs the server.
    noise_source : str
        ``"secure"``: DP noise and Poisson sampling from ChaCha20 keyed from
        ``os.urandom`` on the node (nobody, the server included, can regenerate them).
        ``"seeded"``: from torch generators seeded by the run config (reproducible, and
        so regenerable by whoever knows the run config). Default: secure, seeded when
        simulated.
    require_dp : bool
        Refuse runs with ``dp = false``. Default: true, false when simulated.
    min_noise_multiplier : float
        Refuse a noise multiplier below this (0: no floor).
    max_epsilon : float
        The node's record-level budget over every run on its data (at the run's δ, by
        the node's ledger); a round that would pass it is refused. ``inf``: no budget.
    allowed_accountants : tuple of str
        Accountants the node accepts for its ledger.
    state_dir : str
        Where the ledger lives across runs and restarts. Required for DP training
        unless simulated (then empty means: within one run, in memory).
    data_id : str
        The key the node's ledger is kept under (default: from its data location).
    """

    simulated: bool = False
    noise_source: str = "secure"
    require_dp: bool = True
    min_noise_multiplier: float = 0.0
    max_epsilon: float = math.inf
    allowed_accountants: tuple[str, ...] = tuple(ACCOUNTANT_NAMES)
    state_dir: str = ""
    data_id: str = ""

    def __post_init__(self) -> None:
        if self.noise_source not in NOISE_SOURCES:
            raise ValueError(
                f"node-config key 'noise-source' = {self.noise_source!r} is not known: must be "
                + " or ".join(repr(s) for s in NOISE_SOURCES)
            )
        if not self.min_noise_multiplier >= 0:
            raise ValueError(
                f"node-config key 'min-noise-multiplier' = {self.min_noise_multiplier!r} is "
                "out of range: must be >= 0"
            )
        if not self.max_epsilon > 0:
            raise ValueError(
                f"node-config key 'max-epsilon' = {self.max_epsilon!r} is out of range: "
                "must be > 0"
            )
        unknown = [a for a in self.allowed_accountants if a not in ACCOUNTANT_NAMES]
        if unknown or not self.allowed_accountants:
            raise ValueError(
                f"node-config key 'allowed-accountants' = {','.join(self.allowed_accountants)!r}"
                f" must list some of {', '.join(ACCOUNTANT_NAMES)}"
            )

    @classmethod
    def from_node_config(
        cls, node_config: Mapping[str, Any], *, environ: Mapping[str, str] | None = None
    ) -> NodePolicy:
        """Read the policy from a node config (missing keys take their defaults).

        Raises ``ValueError`` naming the key for a value of the wrong type or range.
        """
        environ = os.environ if environ is None else environ
        simulated = _flag(node_config, "simulated", environ.get(SIMULATED_NODES_ENV) == "1")
        accountants = node_config.get("allowed-accountants", ",".join(ACCOUNTANT_NAMES))
        if not isinstance(accountants, str):
            raise ValueError("node-config key 'allowed-accountants' must be a string, e.g. 'rdp'")
        return cls(
            simulated=simulated,
            noise_source=str(node_config.get("noise-source", "seeded" if simulated else "secure")),
            require_dp=_flag(node_config, "require-dp", not simulated),
            min_noise_multiplier=_number(node_config, "min-noise-multiplier", 0.0),
            max_epsilon=_number(node_config, "max-epsilon", math.inf),
            allowed_accountants=tuple(a.strip() for a in accountants.split(",") if a.strip()),
            state_dir=str(node_config.get("state-dir", "")),
            data_id=str(node_config.get("data-id", "")),
        )

    def check_run(self, *, dp: bool, noise_multiplier: float | None, accountant: str) -> None:
        """Refuse a run that asks for less than this policy (before anything is trained).

        ``noise_multiplier`` is the one the round would use (None: not known yet).
        """
        if not dp:
            if self.require_dp:
                raise PolicyRefusal(
                    "this node requires DP (node-config require-dp = true); the run asks for "
                    "dp = false"
                )
            return
        if not self.state_dir and not self.simulated:
            raise PolicyRefusal(
                "this node has no node-config 'state-dir', so its privacy ledger would not "
                "survive a restart; a deployed node refuses DP training without one"
            )
        if accountant not in self.allowed_accountants:
            raise PolicyRefusal(
                f"this node accepts the accountants {', '.join(self.allowed_accountants)} "
                f"(node-config allowed-accountants); the run asks for {accountant!r}"
            )
        if noise_multiplier is not None and noise_multiplier < self.min_noise_multiplier:
            raise PolicyRefusal(
                f"noise multiplier {noise_multiplier:.4g} is below this node's minimum "
                f"{self.min_noise_multiplier:g} (node-config min-noise-multiplier)"
            )

    def describe(self) -> str:
        """One line for the node's log."""
        budget = "none" if math.isinf(self.max_epsilon) else f"{self.max_epsilon:g}"
        return (
            f"node policy: noise-source {self.noise_source}, require-dp {self.require_dp}, "
            f"min-noise-multiplier {self.min_noise_multiplier:g}, max-epsilon {budget}, "
            f"accountants {','.join(self.allowed_accountants)}, "
            f"ledger {self.state_dir or 'in memory (this run only)'}"
        )


def _flag(node_config: Mapping[str, Any], key: str, default: bool) -> bool:
    value = node_config.get(key, default)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    if not isinstance(value, bool):
        raise ValueError(f"node-config key {key!r} = {value!r} must be true or false")
    return value


def _number(node_config: Mapping[str, Any], key: str, default: float) -> float:
    value = node_config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"node-config key {key!r} = {value!r} must be a number")
    return float(value)
