"""Audit a run folder: attack its final global model, set the result beside the claimed ε.

Members are the records the clients trained on: every client's partition, rebuilt from
the run folder's ``config.json`` exactly as the clients built it (client ``i`` holds
partition ``i`` of ``num_nodes``: a simulation's and ``deploy-local``'s node configs).
Non-members are the server's held-out test split, which no client trained on. A member
that was never sampled into a round only weakens the attack, never inflates the bound.

Both are drawn at random to equal numbers (at most ``max_records`` each): the one-run
bound assumes every audited record was a member by a fair coin, and equal counts are the
closest a fixed train/test split comes to that (see README, "Audit").

The claimed ε is the run's record-level ε per client (each client's DP-SGD on its own
records, ``privacy/<client>.json``): a record sits in one client's data, that client's
ε bounds it, and the rest of the run is post-processing of that client's updates, so
the largest client ε bounds the membership of any record in the union of the clients'
data (for the partition as it was).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fedmodel.atomic_files import write_atomically
from fedmodel.audit.membership_inference import LOW_FPR, AttackResult, loss_threshold_attack
from fedmodel.config import ConfigError, RunConfig

AUDIT_FILE = "audit.json"
DEFAULT_MAX_RECORDS = 5000


class AuditError(ValueError):
    """The run folder cannot be audited (its message names the folder and why)."""


@dataclass(frozen=True)
class ClaimedPrivacy:
    """What the run claims: the largest record-level ε over its clients, δ, accountant.

    ``epsilon`` is ``inf`` for a run without DP, ``nan`` when DP was on but no client
    ledger was written.
    """

    dp: bool
    epsilon: float
    delta: float
    accountant: str
    clients: int
    unit: str = "record-level per client"
    composed: str = "every DP-SGD step on the client's data, all rounds"
    other_units: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if not self.dp:
            return "ε = ∞ (DP off: no guarantee)"
        if math.isnan(self.epsilon):
            return "ε unknown (DP on, but the run folder holds no client ledger)"
        return (
            f"ε = {self.epsilon:.3f}, δ = {self.delta:g}, {self.accountant} accountant, "
            f"{self.unit} (max over {self.clients} clients; composed over {self.composed})"
        )


@dataclass(frozen=True)
class RunAudit:
    """A run folder's audit: the attack's result, the claim, the records attacked."""

    run_dir: str
    attack: AttackResult
    claimed: ClaimedPrivacy
    members_available: int
    non_members_available: int
    seed: int

    @property
    def within_claim(self) -> bool:
        """The empirical lower bound does not exceed the claimed ε (always, without DP)."""
        claimed = self.claimed.epsilon if self.claimed.dp else math.inf
        return math.isnan(claimed) or self.attack.epsilon_lower_bound <= claimed

    def to_json(self) -> dict[str, Any]:
        a, claimed = self.attack, self.claimed
        return {
            "run_dir": self.run_dir,
            "attack": "loss threshold (Yeom et al. 2018), score = -cross-entropy loss",
            "members": a.members,
            "non_members": a.non_members,
            "members_available": self.members_available,
            "non_members_available": self.non_members_available,
            "seed": self.seed,
            "auc": a.auc,
            "tpr_at_fpr": {"fpr": LOW_FPR, "tpr": a.tpr_at_low_fpr},
            "empirical_epsilon": {
                "lower_bound": _json_number(a.epsilon_lower_bound),
                "delta": a.delta,
                "confidence": a.confidence,
                "unit": "record membership in the union of the clients' training data",
                "rates": {
                    "method": "Clopper-Pearson on TPR/FPR at δ: ε >= log((TPR_lo - δ) / "
                    "FPR_hi) (Jagielski et al. 2020, Nasr et al. 2021); threshold chosen "
                    "on half of the records, measured on the other half",
                    "epsilon": _json_number(a.rates.epsilon),
                    "threshold_score": a.rates.threshold,
                    "true_positives": a.rates.true_positives,
                    "members": a.rates.members,
                    "false_positives": a.rates.false_positives,
                    "non_members": a.rates.non_members,
                },
                "one_run": {
                    "method": "Steinke, Nasr & Jagielski 2023 (arXiv:2305.08846), "
                    "Bonferroni over the guess counts tried; assumes each record was a "
                    "member by a fair coin",
                    "epsilon": _json_number(a.one_run.epsilon),
                    "candidates": a.one_run.candidates,
                    "guesses": a.one_run.guesses,
                    "correct": a.one_run.correct,
                    "guessed_in": a.one_run.guessed_in,
                    "guessed_out": a.one_run.guessed_out,
                },
            },
            "claimed": {
                "dp": claimed.dp,
                "epsilon": _json_number(claimed.epsilon),
                "delta": claimed.delta if claimed.dp else None,
                "accountant": claimed.accountant if claimed.dp else None,
                "unit": claimed.unit if claimed.dp else "none (DP off)",
                "composed": claimed.composed if claimed.dp else None,
                "clients": claimed.clients,
                "text": claimed.describe(),
                **({"other_units": claimed.other_units} if claimed.other_units else {}),
            },
            "within_claim": self.within_claim,
            "note": "a lower bound from one attack on one run, not a proof of privacy; "
            "the claim bounds any attack, this attack bounds the claim from below",
        }


def audit_run(
    run_dir: str | os.PathLike[str],
    *,
    max_records: int = DEFAULT_MAX_RECORDS,
    confidence: float = 0.95,
    seed: int = 0,
) -> RunAudit:
    """Attack ``run_dir``'s ``model.pt`` with its clients' records and its test split.

    Raises
    ------
    AuditError
        No run folder, no model, a config.json that cannot be read, custom data whose
        clients each brought their own (their records are not known here), or no test split.
    """
    from fedmodel.audit.membership_inference import example_losses

    if max_records < 2:
        raise AuditError(f"max_records must be >= 2, got {max_records}")
    folder = Path(run_dir)
    config, document = _read_config(folder)
    model = _load_model(folder, config, document)
    num_nodes = document.get("num_nodes")
    if not isinstance(num_nodes, int) or num_nodes < 1:
        raise AuditError(f"{folder / 'config.json'}: has no num_nodes (the number of clients)")
    members = _members(config, num_nodes=num_nodes, folder=folder)
    non_members = _non_members(config, num_nodes=num_nodes, folder=folder)
    count = min(len(members[0]), len(non_members[0]), max_records)
    rng = np.random.default_rng(seed)
    picked_in = np.sort(rng.choice(len(members[0]), size=count, replace=False))
    picked_out = np.sort(rng.choice(len(non_members[0]), size=count, replace=False))
    member_losses = example_losses(model, members[0][picked_in], members[1][picked_in])
    non_member_losses = example_losses(
        model, non_members[0][picked_out], non_members[1][picked_out]
    )
    if not (np.all(np.isfinite(member_losses)) and np.all(np.isfinite(non_member_losses))):
        raise AuditError(f"{folder / 'model.pt'}: the model gives non-finite losses")
    attack = loss_threshold_attack(
        member_losses, non_member_losses, delta=config.delta, confidence=confidence, seed=seed
    )
    return RunAudit(
        run_dir=str(folder),
        attack=attack,
        claimed=claimed_privacy(folder, config),
        members_available=len(members[0]),
        non_members_available=len(non_members[0]),
        seed=seed,
    )


def load_run_model(run_dir: str | os.PathLike[str]) -> tuple[torch.nn.Module, RunConfig]:
    """A run folder's final global model (in eval mode) and its run config.

    For attacks on records of one's own choosing (canaries, as in
    ``simulations/benchmarks/audit.py``). Raises :class:`AuditError` as :func:`audit_run`.
    """
    folder = Path(run_dir)
    config, document = _read_config(folder)
    return _load_model(folder, config, document), config


def save_audit(audit: RunAudit) -> Path:
    """Write ``<run_dir>/audit.json`` atomically; returns its path."""
    path = Path(audit.run_dir) / AUDIT_FILE
    write_atomically(path, json.dumps(audit.to_json(), indent=2, allow_nan=False) + "\n")
    return path


def claimed_privacy(folder: Path, config: RunConfig) -> ClaimedPrivacy:
    """The run's claim: the largest ε of ``privacy/<client>.json``, with δ and accountant."""
    from fedmodel.privacy.ledger import ACCOUNTANT_NAMES

    accountant = ACCOUNTANT_NAMES.get(config.accountant, config.accountant)
    other = {}
    unit = config.to_mapping().get("privacy-unit", "record")
    if unit != "record":  # user-level DP (another claim, in privacy.json): not this number
        other["privacy-unit"] = unit
    if not config.dp:
        return ClaimedPrivacy(False, math.inf, config.delta, accountant, 0, other_units=other)
    epsilons = []
    for path in sorted((folder / "privacy").glob("*.json")):
        try:
            ledger = json.loads(path.read_text())
            epsilons.append(float(ledger["epsilon"]))
            accountant = ACCOUNTANT_NAMES.get(ledger.get("accountant"), accountant)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise AuditError(f"{path}: not a client ledger ({error})") from error
    epsilon = max(epsilons) if epsilons else math.nan
    return ClaimedPrivacy(True, epsilon, config.delta, accountant, len(epsilons), other_units=other)


def _read_config(folder: Path) -> tuple[RunConfig, dict[str, Any]]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such run folder")
    path = folder / "config.json"
    if not path.is_file():
        raise AuditError(f"{folder}: not a run folder (no config.json)")
    try:
        document = json.loads(path.read_text())
        config = RunConfig.from_mapping(document["run_config"])
    except ConfigError as error:  # before ValueError, which it is
        raise AuditError(f"{path}: its run config is invalid: {error}") from error
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise AuditError(f"{path}: not a run folder's config.json ({error})") from error
    return config, document


def _load_model(folder: Path, config: RunConfig, document: dict[str, Any]) -> torch.nn.Module:
    path = folder / "model.pt"
    if not path.is_file():
        raise AuditError(f"{folder}: holds no model.pt (no round finished)")
    try:
        input_shape = tuple(int(n) for n in document["input_shape"])
        num_classes = int(document["num_classes"])
    except (KeyError, TypeError, ValueError) as error:
        raise AuditError(
            f"{folder / 'config.json'}: lacks the model's input shape ({error})"
        ) from error
    model = _build_model(config, input_shape=input_shape, num_classes=num_classes)
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as error:  # noqa: BLE001 - any failure means the file does not fit
        raise AuditError(
            f"{path}: does not load into the run's {config.model!r}: {error}"
        ) from error
    return model.eval()


def _build_model(config: RunConfig, *, input_shape: tuple[int, ...], num_classes: int):
    from fedmodel import models

    if hasattr(models, "model_settings"):  # the run config's full model settings
        settings = models.model_settings(config)
        return models.build_model(
            config.model, input_shape=input_shape, num_classes=num_classes, settings=settings
        )
    return models.build_model(
        config.model,
        input_shape=input_shape,
        num_classes=num_classes,
        hidden_sizes=config.hidden_layer_sizes,
    )


def _members(
    config: RunConfig, *, num_nodes: int, folder: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every client's training records, as the clients built them."""
    from fedmodel.data import DATASETS, load_partition

    parts = []
    if DATASETS.get(config.dataset).own_data:
        from fedmodel.data.sources.loading import client_source

        if not config.data_path:
            raise AuditError(
                f"{folder}: each client brought its own data (no run-config 'data-path'); "
                "its records are not known here, so there are no members to attack"
            )
        for i in range(num_nodes):
            node = {"partition-id": i, "num-partitions": num_nodes}
            parts.append(_tensors(client_source(config, node_config=node).train.dataset))
    else:
        for i in range(num_nodes):
            parts.append(_tensors(load_partition(config, partition_id=i, num_partitions=num_nodes)))
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


def _non_members(
    config: RunConfig, *, num_nodes: int, folder: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    """The server's held-out test split."""
    from fedmodel.data import DATASETS, load_test_split

    if DATASETS.get(config.dataset).own_data:
        from fedmodel.data.sources.loading import load_test_set

        source = load_test_set(config)
        test = source.train.dataset if source is not None else None
    else:
        test = load_test_split(config, num_clients=num_nodes)
    if test is None or len(test) < 2:  # type: ignore[arg-type]
        raise AuditError(
            f"{folder}: the run has no held-out test split (custom data: run-config "
            "'test-data'), so there are no non-members to compare with"
        )
    return _tensors(test)


def _tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None:
        return tensors[0].float(), tensors[1].long()
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))), strict=True)  # type: ignore[arg-type]
    return torch.stack([torch.as_tensor(x) for x in xs]).float(), torch.as_tensor(ys).long()


def _json_number(value: float) -> float | str | None:
    if math.isnan(value):
        return None
    return "inf" if math.isinf(value) else value


__all__ = [
    "AUDIT_FILE",
    "DEFAULT_MAX_RECORDS",
    "AuditError",
    "ClaimedPrivacy",
    "RunAudit",
    "audit_run",
    "claimed_privacy",
    "load_run_model",
    "save_audit",
]
