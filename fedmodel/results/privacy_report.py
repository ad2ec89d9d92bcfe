"""The run folder's privacy report: ``privacy.json`` and ``privacy.md``.

What a run's guarantee is, in one place: the unit(s) protected, each mechanism with its
parameters (σ, C, q for records and for clients, steps or rounds), the accountant and δ,
ε per client and for the federation, what is protected against whom and what is not, and
where the noise came from. Rewritten after every round with the rest of the run folder,
and once more when the run ends (with why it ended early, if it did).

Units:

- **record-level** (``dp = true``): each client runs DP-SGD (Abadi et al. 2016, "Deep
  Learning with Differential Privacy", CCS) on its own records, so every update it
  sends is already private for each of its records. Records are disjoint across
  clients, so by parallel composition a record of the federation is protected at its
  own client's ε: the federation's record-level ε is the largest client's.
- **user-level** (``privacy-unit = "user"`` or ``"both"``): DP-FedAvg on the server
  (McMahan et al. 2018), one ε for the whole federation protecting each client's
  entire data, against whoever sees the global models.
"""

from __future__ import annotations

from typing import Any

from fedmodel.config import RunConfig
from fedmodel.privacy.ledger import ACCOUNTANT_NAMES

RECORD_MECHANISM = (
    "DP-SGD on each client (Abadi et al. 2016) via Opacus: per-example gradients clipped "
    "to C, Gaussian noise sigma * C per step, Poisson-sampled batches of rate q"
)
USER_MECHANISM = (
    "DP-FedAvg on the server (McMahan et al. 2018): each client's update clipped to C, "
    "equal weights, sum divided by the expected cohort m, Gaussian noise z * C / m on the "
    "mean; a missing or rejected reply counts as a zero update"
)
USER_NOISE_SOURCE = (
    "the server: Flower's add_gaussian_noise_inplace draws from NumPy's global generator "
    "(seeded by NumPy from the operating system; fedmodel never seeds it); cohorts drawn "
    "with random.SystemRandom"
)


def privacy_report(
    config: RunConfig,
    *,
    ledgers: dict[str, dict[str, Any]],
    user_level: dict[str, Any] | None,
    rounds_run: int,
    stopped: str = "",
) -> dict[str, Any]:
    """The report of a run, as a JSON-ready dict.

    Parameters
    ----------
    config : RunConfig
        The run's config.
    ledgers : dict
        Each client's latest ledger (``ClientTracking.ledgers``: ``epsilon``,
        ``history`` of ``[sigma, q, steps]``, ``noise_source``, ``node_id``...).
    user_level : dict, optional
        The user-level mechanism's record (``UserLevelDP.report()``); None without it.
    rounds_run : int
        Rounds recorded so far.
    stopped : str
        Why the run ended before its last round ("" if it did not).
    """
    secure = bool(getattr(config, "secure_aggregation", False))  # the SecAgg+ key
    units = (["record-level"] if config.dp else []) + (["user-level"] if user_level else [])
    report: dict[str, Any] = {
        "units": units,
        "delta": config.delta,
        "rounds_run": rounds_run,
        "rounds_planned": config.num_server_rounds,
        "stopped": stopped,
        "secure_aggregation": secure,
        "record_level": _record_level(config, ledgers) if config.dp else None,
        "user_level": user_level,
    }
    report["protected"], report["not_protected"] = _claims(config, user_level, secure)
    return report


def _record_level(config: RunConfig, ledgers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    clients = {}
    for client, ledger in sorted(ledgers.items()):
        history = [(float(s), float(q), int(n)) for s, q, n in ledger.get("history", [])]
        clients[client] = {
            "node_id": ledger.get("node_id"),
            "epsilon": float(ledger["epsilon"]),
            "steps": sum(n for _, _, n in history),
            "noise_multipliers": sorted({s for s, _, _ in history}),
            "sample_rates": sorted({q for _, q, _ in history}),
            "noise_source": ledger.get("noise_source", "unknown"),
        }
    epsilons = [c["epsilon"] for c in clients.values()]
    accountant = ACCOUNTANT_NAMES[config.accountant]
    return {
        "unit": "record-level, per client: one record of a client, over every DP-SGD step "
        "on its data (and earlier runs', for a node that keeps its ledger)",
        "mechanism": RECORD_MECHANISM,
        "accountant": accountant,
        "delta": config.delta,
        "clipping_norm": config.max_grad_norm,
        "noise_multiplier": (
            f"calibrated per client for target ε {config.target_epsilon:g}"
            if config.target_epsilon > 0
            else config.noise_multiplier
        ),
        "clients": clients,
        "epsilon_max": max(epsilons) if epsilons else 0.0,
        "epsilon_mean": sum(epsilons) / len(epsilons) if epsilons else 0.0,
        "federation": "a record is protected at its client's ε (records are disjoint across "
        "clients: parallel composition), so the federation's record-level ε is epsilon_max",
    }


def _claims(
    config: RunConfig, user_level: dict[str, Any] | None, secure: bool
) -> tuple[list[str], list[str]]:
    protected, not_protected = [], []
    if config.dp:
        protected.append(
            "each training record, at its client's record-level ε, against the server and "
            "anyone who sees the updates or the global models (the noise is added on the "
            "client, before its update leaves it)"
        )
    if user_level:
        protected.append(
            f"each client's whole data and its participation, at user-level ε "
            f"{user_level['epsilon']:.4f} (δ = {config.delta:g}), against anyone who sees "
            "the global models of every round and the final one"
        )
    if not config.dp and not user_level:
        not_protected.append("everything: DP is off (ε = ∞)")
    if secure:
        protected.append(
            "the individual updates, against an honest-but-curious server: it learns only "
            "their sum (SecAgg+; Flower 1.42 seeds each mask from a 32-bit value, "
            "flwrlabs/flower#7522, so a server that searches the seeds can unmask: README, "
            "'Secure aggregation')"
        )
    else:
        not_protected.append(
            "the server sees individual updates (no secure aggregation)"
            + (
                "; user-level DP holds against those who see the models, not the server"
                if user_level
                else ""
            )
        )
    not_protected.append(
        "who takes part: the server picks the cohort and sees which nodes reply, and each "
        "reply's num-examples"
    )
    if not config.dp:
        not_protected.append(
            "the clients' training loss and evaluation metrics: sent and averaged without "
            "noise (outside any ε)"
        )
    elif config.fraction_evaluate > 0:
        not_protected.append(
            "client-side evaluation metrics (held-out splits, averaged without noise)"
        )
    return protected, not_protected


def privacy_markdown(report: dict[str, Any]) -> str:
    """``privacy.md``: the report for a reader."""
    units = " and ".join(report["units"]) or "none (DP off)"
    lines = [
        "# Privacy report",
        "",
        f"- Unit(s) protected: **{units}**",
        f"- δ = {report['delta']:g}; rounds run: {report['rounds_run']} of "
        f"{report['rounds_planned']}",
    ]
    if report["stopped"]:
        lines.append(f"- Stopped early: {report['stopped']}")
    secure = "on (SecAgg+)" if report["secure_aggregation"] else "off"
    lines.append(f"- Secure aggregation: {secure}")
    record = report["record_level"]
    if record:
        lines += [
            "",
            "## Record-level DP (per client)",
            "",
            f"- Mechanism: {record['mechanism']}",
            f"- Accountant: {record['accountant']}, δ = {record['delta']:g}",
            f"- C (max-grad-norm) = {record['clipping_norm']:g}; σ: {record['noise_multiplier']}",
            f"- ε max {record['epsilon_max']:.4f}, mean {record['epsilon_mean']:.4f} "
            f"({len(record['clients'])} clients); federation: {record['federation']}",
            "",
            "| client | node | ε | steps | σ | q (records) | noise source |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for client, row in record["clients"].items():
            sigmas = ", ".join(f"{s:.4g}" for s in row["noise_multipliers"])
            rates = ", ".join(f"{q:.4g}" for q in row["sample_rates"])
            lines.append(
                f"| {client} | {row['node_id']} | {row['epsilon']:.4f} | {row['steps']} | "
                f"{sigmas} | {rates} | {row['noise_source']} |"
            )
    user = report["user_level"]
    if user:
        adaptive = (
            f", now {user['clipping_norm_now']:.4g}" if user["clipping"] == "adaptive" else ""
        )
        lines += [
            "",
            "## User-level DP (the federation)",
            "",
            f"- Mechanism: {user['mechanism']}",
            f"- {user['describe']}",
            f"- z = {user['noise_multiplier']:g}; C = {user['clipping_norm']:g} "
            f"({user['clipping']} clipping{adaptive}); m = {user['clients_per_round']} of "
            f"N = {user['population']}, q (clients) = {user['client_sample_rate']:.4g}, "
            f"{user['sampling']} sampling",
            f"- Accountant: {user['accountant']}; neighbouring relation "
            f"{user['neighbouring_relation']}; accounted noise multiplier "
            f"{user['accounted_noise_multiplier']:g}; rounds composed {user['rounds_composed']}",
            f"- Budget (max-epsilon): {user['max_epsilon'] or 'none'}",
            f"- Noise source: {user['noise_source']}",
        ]
    lines += ["", "## Protected", ""] + [f"- {p}" for p in report["protected"]]
    lines += ["", "## Not protected", ""] + [f"- {p}" for p in report["not_protected"]]
    return "\n".join(lines) + "\n"


def user_level_header(user_level: dict[str, Any]) -> str:
    """The header line saying what the printed user-level ε means."""
    return (
        f"user-level ε: DP-FedAvg over whole clients, {user_level['accountant']}, "
        f"δ = {user_level['delta']:g}, composed over every noised round "
        f"({user_level['sampling']} sampling, {user_level['neighbouring_relation']})"
    )
