"""A loss-threshold membership-inference attack and what its success implies for ε.

The attack of Yeom et al. 2018 (https://arxiv.org/abs/1709.01604): a record whose loss
under the model is low was probably trained on. Its score is ``-loss``; every threshold
on it is one test "member or not", which :mod:`fedmodel.audit.empirical_epsilon` turns
into ε lower bounds.

Why by hand: the attack is one line (the loss of each record). The maintained libraries
were weighed: ``adversarial-robustness-toolbox`` (MembershipInferenceBlackBox) trains an
attack classifier on part of the audited records and needs its own model wrapper, and
``privacy-meter`` 1.0.1 (2023) imports TensorFlow, pandas and seaborn without declaring
them; neither offers the plain loss threshold. ROC and AUC are scikit-learn's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

from fedmodel.audit.empirical_epsilon import (
    OneRunBound,
    RatesBound,
    best_one_run_bound,
    best_rates_bound,
    rates_bound_at,
)

LOW_FPR = 1e-3  # "TPR at 0.1% FPR" (Carlini et al. 2022, https://arxiv.org/abs/2112.03570)


def example_losses(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1024
) -> np.ndarray:
    """Cross-entropy loss of every example under ``model`` (in eval mode, no gradients)."""
    if len(x) != len(y):
        raise ValueError(f"{len(x)} examples but {len(y)} labels")
    model.eval()
    losses = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = model(x[start : start + batch_size])
            losses.append(
                nn.functional.cross_entropy(
                    logits, y[start : start + batch_size], reduction="none"
                ).double()
            )
    return torch.cat(losses).numpy() if losses else np.zeros(0)


def tpr_at_fpr(member_scores: np.ndarray, non_member_scores: np.ndarray, *, fpr: float) -> float:
    """The highest true-positive rate among thresholds whose false-positive rate is <= ``fpr``.

    With fewer than ``1 / fpr`` non-members only FPR = 0 qualifies.
    """
    labels, scores = _labelled(member_scores, non_member_scores)
    false_positive_rates, true_positive_rates, _ = roc_curve(labels, scores)
    return float(np.max(true_positive_rates[false_positive_rates <= fpr]))


@dataclass(frozen=True)
class AttackResult:
    """A membership-inference attack on one model: how well it separated, what ε it proves.

    Attributes
    ----------
    auc : float
        Area under the ROC curve (0.5: no better than chance).
    tpr_at_low_fpr : float
        True-positive rate at :data:`LOW_FPR` false positives (on all records).
    rates : RatesBound
        The TPR/FPR bound (Clopper-Pearson at ``confidence``), threshold chosen on
        ``choose`` records and measured on the others.
    one_run : OneRunBound
        The one-run bound of Steinke et al. 2023 on all records.
    members, non_members : int
        Records attacked of each kind.
    chosen_on : int
        Records of each kind the threshold of ``rates`` was chosen on (not measured).
    delta, confidence : float
        The δ of the claim the bounds test, and their confidence.
    """

    auc: float
    tpr_at_low_fpr: float
    rates: RatesBound
    one_run: OneRunBound
    members: int
    non_members: int
    chosen_on: int
    delta: float
    confidence: float

    @property
    def epsilon_lower_bound(self) -> float:
        """The larger of the two bounds (each holds at ``confidence``; see their docs)."""
        return max(self.rates.epsilon, self.one_run.epsilon)


def loss_threshold_attack(
    member_losses: np.ndarray,
    non_member_losses: np.ndarray,
    *,
    delta: float,
    confidence: float = 0.95,
    seed: int = 0,
) -> AttackResult:
    """Attack with score ``-loss``; AUC, TPR at 0.1% FPR and the two ε lower bounds.

    For the TPR/FPR bound a seeded random half of each kind chooses the threshold and
    the other half measures it (Jagielski et al. 2020 choose and measure on separate
    trials): a threshold picked on the records that measure it would overstate ε.

    Parameters
    ----------
    member_losses, non_member_losses : array
        Per-record loss of records trained on and of held-out records (at least 2 each).
    delta : float
        δ of the claim tested.
    confidence : float
        Confidence of both bounds, in (0, 1).
    seed : int
        Seed of the choose/measure split.
    """
    members = -np.asarray(member_losses, dtype=float).ravel()
    non_members = -np.asarray(non_member_losses, dtype=float).ravel()
    if len(members) < 2 or len(non_members) < 2:
        raise ValueError(
            f"need at least 2 members and 2 non-members, got {len(members)} and {len(non_members)}"
        )
    labels, scores = _labelled(members, non_members)
    rng = np.random.default_rng(seed)
    member_order, non_member_order = (
        rng.permutation(len(members)),
        rng.permutation(len(non_members)),
    )
    half_m, half_n = len(members) // 2, len(non_members) // 2
    chosen = best_rates_bound(
        members[member_order[:half_m]],
        non_members[non_member_order[:half_n]],
        delta=delta,
        confidence=confidence,
    )
    rates = rates_bound_at(
        members[member_order[half_m:]],
        non_members[non_member_order[half_n:]],
        threshold=chosen.threshold,
        delta=delta,
        confidence=confidence,
    )
    return AttackResult(
        auc=float(roc_auc_score(labels, scores)),
        tpr_at_low_fpr=tpr_at_fpr(members, non_members, fpr=LOW_FPR),
        rates=rates,
        one_run=best_one_run_bound(
            members, non_members, delta=delta, confidence=confidence, seed=seed
        ),
        members=len(members),
        non_members=len(non_members),
        chosen_on=min(half_m, half_n),
        delta=delta,
        confidence=confidence,
    )


def _labelled(
    member_scores: np.ndarray, non_member_scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    members = np.asarray(member_scores, dtype=float).ravel()
    non_members = np.asarray(non_member_scores, dtype=float).ravel()
    if len(members) == 0 or len(non_members) == 0:
        raise ValueError("need at least one member and one non-member")
    if not (np.all(np.isfinite(members)) and np.all(np.isfinite(non_members))):
        raise ValueError("attack scores must be finite (a loss was NaN or infinite)")
    labels = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))])
    return labels, np.concatenate([members, non_members])


__all__ = [
    "LOW_FPR",
    "AttackResult",
    "example_losses",
    "loss_threshold_attack",
    "tpr_at_fpr",
]
