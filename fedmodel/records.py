"""The one Flower adapter in fedmodel: privacy ledgers (and data descriptions) as records.

A client sends its ledger with every training reply (under the ``"privacy"`` key) and
keeps it in its Context state; both are Flower ``ConfigRecord``s of flat lists, since
records hold scalars and lists of scalars only.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ConfigRecord

from fedmodel.data.sources.federation import DataDescription, FederationData

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


def client_privacy_to_record(state: dict[str, Any]) -> ConfigRecord:
    """A ``ClientPrivacy.state_dict()`` as a ConfigRecord (for the client's Context state)."""
    extra: dict[str, Any] = {"key": str(state["key"])}
    if state.get("calibrated-noise") is not None:
        extra["calibrated-noise"] = float(state["calibrated-noise"])
    return ledger_to_record(state["ledger"], **extra)


def record_to_client_privacy(record: ConfigRecord, *, source: str) -> dict[str, Any]:
    """Back to a ``ClientPrivacy`` state dict; a malformed record raises naming ``source``."""
    noise = record.get("calibrated-noise")
    return {
        "ledger": record_to_ledger(record, source=source),
        "calibrated-noise": None if noise is None else float(noise),  # type: ignore[arg-type]
        "key": str(record.get("key", "")),
    }


# -- custom data: what a client holds, and the model input the server agreed on -------


def description_to_record(description: DataDescription) -> ConfigRecord:
    """A client's data description (its reply to the server's data query)."""
    return ConfigRecord(
        {
            "input-shape": list(description.input_shape),
            "num-classes": description.num_classes,
            "num-examples": description.num_examples,
            "class-names": list(description.class_names),
            "origin": description.origin,
        }
    )


def record_to_description(record: ConfigRecord, *, source: str) -> DataDescription:
    """Back to a description; a malformed record raises naming ``source``."""
    try:
        shape, names = record["input-shape"], record["class-names"]
        if not isinstance(shape, list) or not isinstance(names, list):
            raise TypeError("input-shape and class-names must be lists")
        description = DataDescription(
            input_shape=tuple(int(n) for n in shape),  # type: ignore[arg-type]
            num_classes=int(record["num-classes"]),  # type: ignore[arg-type]
            num_examples=int(record["num-examples"]),  # type: ignore[arg-type]
            class_names=tuple(str(n) for n in names),
            origin=str(record["origin"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"data description from {source} is malformed: {error}") from error
    if (
        not description.input_shape
        or min(description.input_shape) < 1
        or description.num_classes < 1
        or description.num_examples < 1
    ):
        raise ValueError(f"data description from {source} is out of range: {description}")
    return description


def federation_to_record(federation: FederationData) -> ConfigRecord:
    """The agreed model input, sent with every training and evaluation message."""
    return ConfigRecord(
        {"input-shape": list(federation.input_shape), "num-classes": federation.num_classes}
    )


def record_to_federation(record: ConfigRecord) -> FederationData:
    """Back from :func:`federation_to_record` (the server's own record)."""
    shape = record["input-shape"]
    assert isinstance(shape, list)
    return FederationData(
        input_shape=tuple(int(n) for n in shape),  # type: ignore[arg-type]
        num_classes=int(record["num-classes"]),  # type: ignore[arg-type]
    )
