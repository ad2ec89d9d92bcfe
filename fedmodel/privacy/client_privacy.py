"""One client's privacy in a run: what it will spend, what it has spent, what it enforces.

The ClientApp keeps one :class:`ClientPrivacy` per client and run (its
:meth:`~ClientPrivacy.state_dict` lives in Flower's Context state between messages).
Each round it

1. :meth:`~ClientPrivacy.plan_round`: checks the run against the node's
   :class:`~fedmodel.privacy.node_policy.NodePolicy`, fixes the noise multiplier (from
   ``target-epsilon``, against the budget the node's ledger has left), and refuses a
   round whose steps would take ε past ``target-epsilon`` or the node's
   ``max-epsilon``; nothing is trained when it refuses;
2. trains, with Opacus recording each step in :attr:`~ClientPrivacy.ledger`;
3. :meth:`~ClientPrivacy.record_round`: appends the round's steps to the node's ledger
   file (under its lock) before the update may leave, and returns the ledger of every
   step on this data, whose ε the reply carries.

Without a ``state-dir`` (simulated nodes only) the in-run ledger is the whole record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fedmodel.privacy.calibration import BudgetSpent, noise_for_target_epsilon
from fedmodel.privacy.ledger import PrivacyLedger, epsilon_of
from fedmodel.privacy.ledger_store import LedgerStore, data_key
from fedmodel.privacy.node_policy import NodePolicy, PolicyRefusal
from fedmodel.privacy.sampling_plan import steps_per_epoch_for


@dataclass(frozen=True)
class RoundPlan:
    """What one round of DP-SGD on this client will do (all of it public to the server)."""

    noise_multiplier: float
    sample_rate: float
    steps: int


@dataclass(frozen=True)
class PrivacyRequest:
    """The privacy a run asks for (the run-config keys that decide it)."""

    dp: bool
    noise_multiplier: float
    target_epsilon: float
    delta: float
    accountant: str
    num_server_rounds: int
    local_epochs: int
    batch_size: int


class ClientPrivacy:
    """The privacy state of one client in one run.

    Parameters
    ----------
    policy : NodePolicy
        What the node enforces.
    request : PrivacyRequest
        What the run asks for.
    run_id : int
        The run (the ledger file keeps each run's steps under its id).
    data : dict
        The node-chosen description of its data (``ledger_store.data_identity``).
    """

    def __init__(
        self, *, policy: NodePolicy, request: PrivacyRequest, run_id: int, data: dict[str, Any]
    ) -> None:
        self.policy = policy
        self.request = request
        self.run_id = run_id
        self.data = dict(data)
        self.key = data_key(self.data)
        self.ledger = PrivacyLedger(accountant=request.accountant, delta=request.delta)
        self.calibrated_noise: float | None = None
        self.store = LedgerStore(policy.state_dir) if policy.state_dir else None

    # -- the record of what was spent ------------------------------------------------

    def spent(self) -> list[list[float]]:
        """Every step entry on this data so far: the node's file, or this run's ledger."""
        if self.store is not None:
            return self.store.history(self.key)
        return [list(entry) for entry in self.ledger.history]

    def _epsilon(self, history: list[list[float]] | list[tuple[float, float, int]]) -> float:
        return epsilon_of(history, delta=self.request.delta, accountant=self.request.accountant)

    # -- one round -------------------------------------------------------------------

    def plan_round(self, *, num_examples: int, server_round: int) -> RoundPlan:
        """The round's noise, rate and steps; raises :class:`PolicyRefusal` to refuse it."""
        request = self.request
        self.policy.check_run(dp=request.dp, noise_multiplier=None, accountant=request.accountant)
        steps_per_epoch = steps_per_epoch_for(num_examples, request.batch_size)
        sample_rate = 1.0 / steps_per_epoch
        steps = request.local_epochs * steps_per_epoch
        if not request.dp:
            return RoundPlan(noise_multiplier=0.0, sample_rate=sample_rate, steps=steps)
        spent = self.spent()
        noise = request.noise_multiplier
        if request.target_epsilon > 0:
            remaining_rounds = request.num_server_rounds - server_round + 1
            if remaining_rounds < 1:
                raise PolicyRefusal(
                    f"round {server_round} is past the run's plan of "
                    f"{request.num_server_rounds} rounds, for which target-epsilon = "
                    f"{request.target_epsilon:g} was calibrated"
                )
            if self.calibrated_noise is None:
                # Plan for taking part in every remaining round, against what the
                # node's ledger has already spent on this data (earlier runs included).
                try:
                    self.calibrated_noise = noise_for_target_epsilon(
                        target_epsilon=request.target_epsilon,
                        delta=request.delta,
                        sample_rate=sample_rate,
                        steps=remaining_rounds * steps,
                        accountant=request.accountant,
                        prior_history=spent,
                    )
                except BudgetSpent as error:
                    raise PolicyRefusal(f"target-epsilon cannot be kept: {error}") from error
            noise = self.calibrated_noise
        self.policy.check_run(dp=True, noise_multiplier=noise, accountant=request.accountant)
        after = self._epsilon([*spent, (noise, sample_rate, steps)])
        if after > self.policy.max_epsilon:
            raise PolicyRefusal(
                f"this round would take ε on this node's data to {after:.4f}, past its budget "
                f"max-epsilon = {self.policy.max_epsilon:g} (node config; δ = "
                f"{request.delta:g}, {request.accountant}, over every run on this data)"
            )
        # The tolerance absorbs the last digits of Opacus's bisection only.
        if request.target_epsilon > 0 and after > request.target_epsilon * (1 + 1e-9):
            raise PolicyRefusal(
                f"this round would take ε on this node's data to {after:.4f}, past "
                f"target-epsilon = {request.target_epsilon:g} (δ = {request.delta:g}, "
                f"{request.accountant})"
            )
        return RoundPlan(noise_multiplier=noise, sample_rate=sample_rate, steps=steps)

    def record_round(self, plan: RoundPlan, *, steps_before: int) -> PrivacyLedger:
        """Store this round's steps (those Opacus recorded since ``steps_before``).

        Returns the ledger of every step on this data. Raises when the recorded steps
        are not the planned ones (the update must then not leave the node).
        """
        taken = self.ledger.steps - steps_before
        sigma, rate, last_steps = self.ledger.history[-1] if self.ledger.history else (0, 0, 0)
        if (
            taken != plan.steps
            or last_steps < taken
            or not math.isclose(rate, plan.sample_rate)
            or not math.isclose(sigma, plan.noise_multiplier)
        ):
            raise RuntimeError(
                f"DP-SGD recorded {taken} steps ending at (σ {sigma}, q {rate}) but the round "
                f"planned {plan}; update withheld"
            )
        entries = [(plan.noise_multiplier, plan.sample_rate, taken)]
        if self.store is not None:
            history = self.store.append(
                self.key,
                run_id=self.run_id,
                entries=entries,
                data=self.data,
                noise_source=self.policy.noise_source,
            )
        else:
            history = [list(entry) for entry in self.ledger.history]
        total = PrivacyLedger(accountant=self.request.accountant, delta=self.request.delta)
        total.load_state_dict({"accountant": self.request.accountant, "history": history})
        return total

    def record_without_dp(self, plan: RoundPlan) -> None:
        """A round without noise: stored, so the data has no finite guarantee from then on."""
        if self.store is not None:
            self.store.append(
                self.key,
                run_id=self.run_id,
                entries=[(0.0, plan.sample_rate, plan.steps)],
                data=self.data,
                noise_source="none",
            )

    # -- survives between messages -----------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "ledger": self.ledger.state_dict(),
            "calibrated-noise": self.calibrated_noise,
            "key": self.key,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("key") != self.key:
            raise ValueError(
                f"privacy state was kept for data {state.get('key')!r}, this client holds "
                f"{self.key!r}; refusing to mix ledgers"
            )
        self.ledger.load_state_dict(state["ledger"])
        noise = state.get("calibrated-noise")
        self.calibrated_noise = None if noise is None else float(noise)
