"""The one Flower adapter in fedmodel: privacy ledgers to and from Flower records.

A client sends its ledger with every training reply (under the ``"privacy"`` key) and
keeps it in its Context state; both are Flower ``ConfigRecord``s of flat lists, since
records hold scalars and lists of scalars only.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ConfigRecord

LEDGER_KEYS = ("accountant", "delta", "sigmas", "sample-rates", "steps")


def ledger_to_record(state: dict[str, Any], **extra: Any) -> ConfigRecord:
    """A ``PrivacyLedger.state_dict()`` (plus scalar ``extra`` fields) as a ConfigRecord."""
    history = state["history"]
    record = ConfigRecord(
        {
            "accountant": str(state["accountant"]),
            "delta": float(state["delta"]),
            "sigmas": [float(s) for s, _, _ in history],
            "sample-rates": [float(q) for _, q, _ in history],
            "steps": [int(n) for _, _, n in history],
        }
    )
    for key, value in extra.items():
        record[key] = value
    return record


def record_to_ledger(record: ConfigRecord, *, source: str) -> dict[str, Any]:
    """Back to a ledger state dict; a malformed record raises naming ``source``."""
    missing = [key for key in LEDGER_KEYS if key not in record]
    if missing:
        raise ValueError(f"privacy record from {source} lacks {', '.join(missing)}")
    sigmas, rates, steps = record["sigmas"], record["sample-rates"], record["steps"]
    if not (
        isinstance(sigmas, list) and isinstance(rates, list) and isinstance(steps, list)
    ) or not (len(sigmas) == len(rates) == len(steps)):
        raise ValueError(
            f"privacy record from {source}: sigmas, sample-rates, steps must be equal-length lists"
        )
    if (
        any(s < 0 for s in sigmas)
        or any(not 0 < q <= 1 for q in rates)
        or any(n < 0 for n in steps)
    ):
        raise ValueError(f"privacy record from {source}: history values out of range")
    return {
        "accountant": record["accountant"],
        "delta": float(record["delta"]),  # type: ignore[arg-type]
        "history": [
            [float(s), float(q), int(n)] for s, q, n in zip(sigmas, rates, steps, strict=True)
        ],
    }
