"""``fedmodel audit RUN_DIR``: a membership-inference attack on a run's final global model.

Attacks ``RUN_DIR/model.pt`` with the clients' training records (members) and the
server's held-out test split (non-members), prints AUC, TPR at 0.1% FPR and the empirical
ε lower bounds the attack implies beside the run's claimed ε, and writes
``RUN_DIR/audit.json`` (see :mod:`fedmodel.audit`; README, "Audit"). A missing folder,
model or test split is one error line (exit code 2).
"""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedmodel.audit import RunAudit


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``audit`` to ``fedmodel``'s subcommands."""
    audit = commands.add_parser(
        "audit",
        help="membership-inference attack on a run's model: AUC, TPR at 0.1%% FPR, "
        "empirical ε lower bound beside the claimed ε",
        description="Attack RUN_DIR/model.pt with a loss threshold (Yeom et al. 2018): the "
        "clients' training records against the server's test split. Prints the empirical ε "
        "lower bounds it implies (Clopper-Pearson on TPR/FPR; one-run, Steinke et al. 2023) "
        "beside the claimed ε and writes RUN_DIR/audit.json. A lower bound from one attack, "
        "not a proof of privacy.",
    )
    audit.set_defaults(run=run)
    audit.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (config.json, model.pt)")
    audit.add_argument(
        "--max-records",
        type=int,
        default=5000,
        help="members and non-members attacked, each (default 5000; fewer if fewer exist)",
    )
    audit.add_argument(
        "--confidence", type=float, default=0.95, help="confidence of the bounds (default 0.95)"
    )
    audit.add_argument("--seed", type=int, default=0, help="seed of the records drawn")


def run(args: argparse.Namespace) -> int:
    """Audit ``args.run_dir``; print the table, write audit.json (exit 0)."""
    from fedmodel.audit import audit_run, save_audit

    if not 0.0 < args.confidence < 1.0:
        raise ValueError(f"--confidence must be in (0, 1), got {args.confidence}")
    if args.max_records < 2:
        raise ValueError(f"--max-records must be >= 2, got {args.max_records}")
    audit = audit_run(
        args.run_dir, max_records=args.max_records, confidence=args.confidence, seed=args.seed
    )
    print(report(audit))
    print(f"wrote {save_audit(audit)}")
    return 0


def report(audit: RunAudit) -> str:
    """The printed table: the attack's numbers, the bounds, the claim, the units."""
    a, claimed = audit.attack, audit.claimed
    rates, one_run = a.rates, a.one_run
    low_fpr_note = (
        f" (with {a.non_members} non-members only FPR 0 is below 0.1%)"
        if a.non_members < 1000
        else ""
    )
    rows = [
        ("attack", "loss threshold (Yeom et al. 2018)"),
        (
            "records",
            f"{a.members} members (of {audit.members_available}), {a.non_members} non-members "
            f"(of {audit.non_members_available}), seed {audit.seed}",
        ),
        ("AUC", f"{a.auc:.4f} (0.5: chance)"),
        ("TPR at 0.1% FPR", f"{a.tpr_at_low_fpr:.4f}{low_fpr_note}"),
        (
            "empirical ε, TPR/FPR",
            f"{_eps(rates.epsilon)} at δ = {a.delta:g} (TPR {rates.tpr:.3f}, FPR "
            f"{rates.fpr:.3f} on {rates.members}+{rates.non_members} records; threshold "
            "chosen on the others)"
            if rates.epsilon > 0
            else "0.000 (no threshold proves ε > 0)",
        ),
        (
            "empirical ε, one run",
            f"{_eps(one_run.epsilon)} at δ = {a.delta:g} ({one_run.correct} of "
            f"{one_run.guesses} guesses right, {one_run.candidates} candidates; Steinke et "
            "al. 2023)"
            if one_run.guesses
            else f"0.000 (no guess count refutes ε > 0; {one_run.candidates} candidates)",
        ),
        (
            "empirical ε lower bound",
            f"{_eps(a.epsilon_lower_bound)} at δ = {a.delta:g}, {100 * a.confidence:g}% "
            "confidence; unit: one record's membership in the union of the clients' data",
        ),
        ("claimed", claimed.describe()),
    ]
    if claimed.other_units:
        rows.append(
            (
                "also claimed",
                f"privacy-unit = {claimed.other_units['privacy-unit']!r}: a user-level ε "
                "(privacy.json) protects a whole client, another unit; not compared here",
            )
        )
    verdict = (
        "yes"
        if audit.within_claim
        else "NO: the attack refutes the claimed ε (a bug in "
        "training or accounting, or the audit's assumptions fail; see README, 'Audit')"
    )
    rows.append(("lower bound <= claimed", verdict if claimed.dp else "yes (no claim: DP off)"))
    width = max(len(name) for name, _ in rows)
    lines = [f"audit of {audit.run_dir}"]
    lines += [f"  {name:<{width}}  {value}" for name, value in rows]
    lines.append(
        "  a lower bound from one attack on one run, not a proof: the claim bounds every "
        "attack, this attack bounds the claim from below"
    )
    return "\n".join(lines)


def _eps(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:.3f}"
