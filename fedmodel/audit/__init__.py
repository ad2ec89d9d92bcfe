"""Empirical privacy audit: attack a trained model, bound ε from below, compare with the claim.

- :mod:`fedmodel.audit.membership_inference`: the loss-threshold attack (Yeom et al. 2018),
  AUC and TPR at 0.1% FPR;
- :mod:`fedmodel.audit.empirical_epsilon`: the ε lower bounds an attack's success implies
  (Clopper-Pearson on TPR/FPR, Jagielski et al. 2020; one-run, Steinke et al. 2023);
- :mod:`fedmodel.audit.run_audit`: a run folder's members, non-members, model and claim
  (``fedmodel audit RUN_DIR``).
"""

from fedmodel.audit.empirical_epsilon import (
    clopper_pearson,
    epsilon_from_rates,
    one_run_epsilon,
    one_run_p_value,
)
from fedmodel.audit.membership_inference import (
    LOW_FPR,
    AttackResult,
    example_losses,
    loss_threshold_attack,
    tpr_at_fpr,
)
from fedmodel.audit.run_audit import AuditError, ClaimedPrivacy, RunAudit, audit_run, save_audit

__all__ = [
    "LOW_FPR",
    "AttackResult",
    "AuditError",
    "ClaimedPrivacy",
    "RunAudit",
    "audit_run",
    "clopper_pearson",
    "epsilon_from_rates",
    "example_losses",
    "loss_threshold_attack",
    "one_run_epsilon",
    "one_run_p_value",
    "save_audit",
    "tpr_at_fpr",
]
