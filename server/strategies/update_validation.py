"""Update validation: whether a client's training reply is fit to be aggregated.

A training reply is averaged (or voted) into the global model only if its model is the
global model's: the same array names, shapes and dtypes, every value finite, and a
finite, positive aggregation weight. With run-config ``max-update-norm`` > 0 the
update, the reply's weights minus the global weights over all arrays, is also bounded
in L2 norm: ``update-norm-policy = "reject"`` drops a longer update, ``"clip"`` scales
it down to the bound (norm clipping of whole updates, as in Sun et al. 2019, "Can You
Really Backdoor Federated Learning?", and in DP-FedAvg, McMahan et al. 2018).

The checks are what no aggregation rule does for itself: one NaN makes a FedAvg
average NaN, and one update scaled by 1e6 outweighs any number of honest ones.
Robust rules (Krum, Blanchard et al. 2017; the coordinate-wise median and trimmed
mean, Yin et al. 2018; Bulyan, El Mhamdi et al. 2018) tolerate a minority of
arbitrary *finite* updates, but not a reply of another shape (Flower's strategies then
raise and end the run) nor, for some, a NaN (NaN compares false, so a median or a
distance ranking is undefined). :func:`all_finite` is the last line: an aggregate that
is not finite is never adopted.

:class:`~server.strategies.client_tracking.ClientTracking` runs these checks on every
reply, on every engine and in a deployment, since it lives in the ServerApp.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from fedmodel.config import UPDATE_NORM_POLICIES
from fedmodel.records import to_numpy

NAMES_SHOWN = 3  # array names listed in a message about missing or unexpected ones


@dataclass(frozen=True)
class Verdict:
    """What :meth:`UpdateValidator.check` decided about one training reply.

    Parameters
    ----------
    content : RecordDict, optional
        The reply content to aggregate: the reply's own when nothing had to change, a
        copy with the clipped (or reordered) arrays otherwise; ``None`` when rejected.
    reason : str
        Why the reply is rejected (empty when accepted).
    norm : float
        L2 norm of the update (``nan`` when not computed: no bound, or rejected first).
    clipped : bool
        The update was scaled down to ``max-update-norm``.
    """

    content: RecordDict | None
    reason: str = ""
    norm: float = math.nan
    clipped: bool = False

    @property
    def accepted(self) -> bool:
        return self.content is not None


class UpdateValidator:
    """Checks training replies against the global model of the round.

    Parameters
    ----------
    max_update_norm : float
        Bound on the L2 norm of an update (reply minus global, all arrays together);
        0: no bound.
    policy : str
        What happens to an update above the bound: ``"reject"`` (dropped) or
        ``"clip"`` (scaled by ``max_update_norm / norm``).
    weighted_by_key : str
        The metric holding a reply's aggregation weight (Flower's ``num-examples``).
    """

    def __init__(
        self,
        *,
        max_update_norm: float = 0.0,
        policy: str = "reject",
        weighted_by_key: str = "num-examples",
    ) -> None:
        if not (math.isfinite(max_update_norm) and max_update_norm >= 0):
            raise ValueError(f"max_update_norm must be finite and >= 0, got {max_update_norm}")
        if policy not in UPDATE_NORM_POLICIES:
            raise ValueError(f"policy must be one of {UPDATE_NORM_POLICIES}, got {policy!r}")
        self.max_update_norm = max_update_norm
        self.policy = policy
        self.weighted_by_key = weighted_by_key
        self._reference: dict[str, np.ndarray] = {}

    def use_reference(self, arrays: ArrayRecord) -> None:
        """Check the next replies against ``arrays``, the global model they were sent."""
        # Read-only views of the bytes (fedmodel.records.to_numpy): decoded once per round.
        self._reference = {name: to_numpy(array) for name, array in arrays.items()}

    def check(self, content: RecordDict) -> Verdict:
        """Accept, clip or reject one training reply's ``content``."""
        if not self._reference:
            raise RuntimeError("no global model to check replies against: call use_reference")
        records = content.array_records
        if len(records) != 1:
            return Verdict(None, f"reply carries {len(records)} array records; expected 1")
        ((key, record),) = records.items()
        problem = _names_problem(list(record), list(self._reference))
        if problem:
            return Verdict(None, problem)
        received: dict[str, np.ndarray] = {}
        for name, expected in self._reference.items():
            try:
                value = to_numpy(record[name])  # np.load's result, without its header parse
            except Exception as error:  # noqa: BLE001 - any undecodable array is the client's
                return Verdict(None, f"array {name!r} cannot be read ({type(error).__name__})")
            if value.shape != expected.shape or value.dtype != expected.dtype:
                return Verdict(
                    None,
                    f"array {name!r} has shape {value.shape} and dtype {value.dtype}; the "
                    f"global model's has {expected.shape} and {expected.dtype}",
                )
            if value.dtype.kind in "fc":
                bad = int(value.size - np.count_nonzero(np.isfinite(value)))
                if bad:
                    return Verdict(
                        None, f"array {name!r} holds {bad} non-finite values (NaN or Inf)"
                    )
            received[name] = value
        problem = self._weight_problem(content)
        if problem:
            return Verdict(None, problem)
        reordered = list(record) != list(self._reference)
        if not self.max_update_norm:
            return Verdict(_with_arrays(content, key, received) if reordered else content)
        norm = update_norm(received, self._reference)
        if norm <= self.max_update_norm:
            return Verdict(
                _with_arrays(content, key, received) if reordered else content, norm=norm
            )
        if self.policy == "reject" or not math.isfinite(norm):
            return Verdict(
                None,
                f"update norm {norm:.4g} exceeds run-config max-update-norm "
                f"{self.max_update_norm:g} (update-norm-policy = {self.policy!r})",
                norm=norm,
            )
        scale = self.max_update_norm / norm
        clipped = {
            name: _clip(value, self._reference[name], scale) for name, value in received.items()
        }
        return Verdict(_with_arrays(content, key, clipped), norm=norm, clipped=True)

    def _weight_problem(self, content: RecordDict) -> str:
        metrics = content.metric_records
        if len(metrics) != 1:
            return f"reply carries {len(metrics)} metric records; expected 1"
        record: MetricRecord = next(iter(metrics.values()))
        weight = record.get(self.weighted_by_key)
        if not isinstance(weight, int | float) or not (math.isfinite(weight) and weight > 0):
            return f"metric {self.weighted_by_key!r} must be a finite number > 0"
        return ""


def update_norm(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> float:
    """L2 norm of ``arrays - reference`` over every array together (in float64)."""
    total = 0.0
    for name, value in arrays.items():
        delta = value.astype(np.float64) - reference[name].astype(np.float64)
        total += float(np.dot(delta.ravel(), delta.ravel()))
    return math.sqrt(total)


def all_finite(arrays: ArrayRecord) -> bool:
    """Whether every value of every floating-point array of ``arrays`` is finite."""
    for array in arrays.values():
        value = to_numpy(array)
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            return False
    return True


def _names_problem(names: list[str], expected: list[str]) -> str:
    missing = [name for name in expected if name not in names]
    unexpected = [name for name in names if name not in expected]
    parts = []
    if missing:
        parts.append(f"lacks {_some(missing)}")
    if unexpected:
        parts.append(f"has unexpected {_some(unexpected)}")
    if not parts:
        return ""
    return f"the reply's model {' and '.join(parts)} (not the global model's arrays)"


def _some(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:NAMES_SHOWN])
    more = f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else ""
    return f"array{'s' if len(names) > 1 else ''} {shown}{more}"


def _clip(value: np.ndarray, reference: np.ndarray, scale: float) -> np.ndarray:
    if value.dtype.kind not in "fc":  # counters and the like: sent as they are (in the norm)
        return value
    delta = value.astype(np.float64) - reference.astype(np.float64)
    return (reference.astype(np.float64) + scale * delta).astype(value.dtype)


def _with_arrays(content: RecordDict, key: str, arrays: Mapping[str, np.ndarray]) -> RecordDict:
    """A copy of ``content`` whose array record ``key`` holds ``arrays`` (in this order)."""
    copy = RecordDict(dict(content.items()))
    copy[key] = ArrayRecord({name: Array(value) for name, value in arrays.items()})
    return copy
