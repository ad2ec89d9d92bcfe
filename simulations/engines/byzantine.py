"""Byzantine clients, in simulation only: chosen simulated nodes corrupt what they send.

Run-config ``byzantine-fraction`` > 0 makes ``round(byzantine-fraction * num_clients)``
(Python's ``round``) of the simulated nodes Byzantine: the same nodes every round,
chosen by run-config ``seed`` alone (:func:`choose_nodes`). Each runs the honest
ClientApp, and its training reply is corrupted on the way back, as run-config
``byzantine-attack`` says (with ``g`` the global weights the node was sent and ``w``
what honest training returned, all arrays):

``sign-flip``
    ``g - (w - g)``: the update negated (the sign-flipping attack of Li et al. 2019,
    RSA: Byzantine-Robust Stochastic Aggregation Methods, AAAI).
``scale``
    ``g + SCALE_FACTOR * (w - g)`` (:data:`SCALE_FACTOR` = 1e3): the update amplified,
    as a model-replacement attack does (Bagdasaryan et al. 2020, How To Backdoor
    Federated Learning, AISTATS).
``gaussian``
    ``g + n``, ``n`` i.i.d. normal of standard deviation :data:`GAUSSIAN_STD` = 1 per
    value, from a generator seeded by (seed, round, node): the update replaced by
    noise (the Gaussian Byzantine workers of Blanchard et al. 2017, Machine Learning
    with Adversaries, NeurIPS).
``nan``
    every value NaN.
``label-flip``
    the node trains on labels ``y -> C - 1 - y`` (label flipping, Biggio et al. 2011,
    Support Vector Machines Under Adversarial Label Noise, ACML; Fang et al. 2020, Local
    Model Poisoning Attacks to Byzantine-Robust Federated Learning, USENIX Security).

How ``label-flip`` reaches the training without touching the ClientApp or the data
code: the node's ClientApp is sent the global model with the rows of its output
layer reversed (``P g``, ``P`` the permutation ``k -> C - 1 - k`` of the last layer's
weight rows and bias), trains it on its true labels, and the same permutation is
applied to what it returns. Since cross-entropy satisfies ``CE(P z, y) = CE(z, C-1-y)``
and ``P`` is linear and its own inverse, ``L_true(P theta) = L_flipped(theta)`` and every
(S)GD step commutes with ``P``: the node's update is that of training on the flipped
labels (equal up to float rounding: the softmax sums the logits in another order), for
any dataset, engine path and worker process, with nothing about the node's data
changed; a test checks it against training on a dataset with flipped labels. (Under
DP-SGD the per-example clipping norms are the same and the Gaussian noise, isotropic,
lands on the permuted rows: the same distribution, not the same draw.) Why not a
wrapped dataset given through the node config: a node config carries strings, so only
custom data held in this process could be swapped (not the built-in datasets'
partitions, nor in a worker process). It needs a model whose last two arrays are its
output layer's weight ``[C, ...]`` and bias ``[C]``, as every model of
``fedmodel.models`` has.

Everything else of the reply (metrics, the privacy ledger) stays honest, as do the
node's evaluation replies, so what the server's defences face is the update alone
(:mod:`server.strategies.update_validation`, the robust strategies).

Never in a deployment: the ClientApp (``client/client_app.py``) does not read these
keys; only the in-process engine (and its worker pool) applies them
(:func:`~simulations.engines.inprocess.simulate_in_process`), and the Ray engine refuses
them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, RecordDict

from fedmodel.config import RunConfig

SCALE_FACTOR = 1e3
GAUSSIAN_STD = 1.0
ATTACK_LINES = {
    "sign-flip": "send global - update (the update negated)",
    "scale": f"send global + {SCALE_FACTOR:g} x update",
    "gaussian": f"send global + Gaussian noise (std {GAUSSIAN_STD:g} per value)",
    "nan": "send all-NaN weights",
    "label-flip": "train on labels y -> C-1-y",
}
_CHOICE_TAG = 0x42595A  # keeps the choice of nodes apart from the seed's other streams


def choose_nodes(node_ids: Sequence[int], *, fraction: float, seed: int) -> list[int]:
    """The Byzantine nodes: ``round(fraction * len(node_ids))`` of them, chosen by ``seed``.

    The choice depends on the seed and the number of nodes only, never on the round.
    """
    count = min(len(node_ids), round(fraction * len(node_ids)))
    picked = np.random.default_rng([seed, _CHOICE_TAG]).choice(
        len(node_ids), size=count, replace=False
    )
    return sorted(node_ids[int(i)] for i in picked)


@dataclass(frozen=True)
class ByzantineNodes:
    """Which simulated nodes misbehave, and how: applied by the in-process engine.

    Parameters
    ----------
    nodes : frozenset of int
        The Byzantine nodes' ids.
    attack : str
        One of :data:`ATTACK_LINES` (run-config ``byzantine-attack``).
    seed : int
        Run-config ``seed`` (the Gaussian attack's noise).
    """

    nodes: frozenset[int]
    attack: str
    seed: int

    @classmethod
    def from_config(cls, config: RunConfig, *, node_ids: Sequence[int]) -> ByzantineNodes | None:
        """The run config's Byzantine nodes among ``node_ids``; None when it asks for none."""
        if config.byzantine_fraction <= 0:
            return None
        nodes = choose_nodes(node_ids, fraction=config.byzantine_fraction, seed=config.seed)
        return cls(nodes=frozenset(nodes), attack=config.byzantine_attack, seed=config.seed)

    def describe(self, names: Mapping[int, str]) -> str:
        """The one log line: which nodes are Byzantine (by client name) and what they do."""
        if not self.nodes:
            return "Byzantine nodes (simulation): none (byzantine-fraction rounds to 0 nodes)"
        who = ", ".join(f"{names.get(n, f'node-{n}')} (node {n})" for n in sorted(self.nodes))
        return (
            f"Byzantine nodes (simulation, byzantine-attack = {self.attack!r}): {who}; "
            f"they {ATTACK_LINES[self.attack]}"
        )

    def outgoing(self, message: Message) -> Message:
        """What node ``dst_node_id``'s ClientApp is given for ``message``.

        The message itself, except for a training message to a label-flipping node: a
        copy (same metadata) carrying the global model with its output rows reversed.
        """
        if not self._attacks(message) or self.attack != "label-flip":
            return message
        key, arrays = _only_arrays(message.content)
        content = RecordDict(dict(message.content.items()))
        content[key] = ArrayRecord(_arrays(_reverse_outputs(_numpy(arrays))))
        return Message(metadata=copy.copy(message.metadata), content=content)

    def incoming(self, message: Message, reply: Message) -> Message:
        """What the node sends back for ``message``: its ClientApp's ``reply``, corrupted."""
        if not self._attacks(message) or reply.has_error():
            return reply
        key, sent = _only_arrays(message.content)
        reply_key, returned = _only_arrays(reply.content)
        server_round = int(message.content["config"]["server-round"])  # type: ignore[arg-type]
        weights = self._corrupt(
            _numpy(sent), _numpy(returned), server_round=server_round,
            node_id=message.metadata.dst_node_id,
        )
        content = RecordDict(dict(reply.content.items()))
        content[reply_key] = ArrayRecord(_arrays(weights))
        return Message(metadata=reply.metadata, content=content)

    def _attacks(self, message: Message) -> bool:
        kind = message.metadata.message_type.split(".")[0]
        return kind == MessageType.TRAIN and message.metadata.dst_node_id in self.nodes

    def _corrupt(
        self,
        sent: dict[str, np.ndarray],
        returned: dict[str, np.ndarray],
        *,
        server_round: int,
        node_id: int,
    ) -> dict[str, np.ndarray]:
        if self.attack == "label-flip":
            return _reverse_outputs(returned)  # undo the permutation of outgoing()
        if self.attack == "nan":
            return {name: np.full_like(w, np.nan) for name, w in returned.items()}
        noise = np.random.default_rng([self.seed, server_round, node_id, _CHOICE_TAG])
        corrupted = {}
        for name, w in returned.items():
            g = sent[name].astype(np.float64)
            update = w.astype(np.float64) - g
            if self.attack == "sign-flip":
                value = g - update
            elif self.attack == "scale":
                value = g + SCALE_FACTOR * update
            else:  # gaussian
                value = g + noise.normal(0.0, GAUSSIAN_STD, size=w.shape)
            corrupted[name] = value.astype(w.dtype)
        return corrupted


def _only_arrays(content: RecordDict) -> tuple[str, ArrayRecord]:
    records = content.array_records
    if len(records) != 1:
        raise ValueError(f"a training message or reply with {len(records)} array records")
    return next(iter(records.items()))


def _numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in arrays.items()}


def _arrays(values: Mapping[str, np.ndarray]) -> dict[str, Array]:
    return {name: Array(np.ascontiguousarray(value)) for name, value in values.items()}


def _reverse_outputs(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` with the rows of the output layer (the last weight and bias) reversed."""
    names = list(arrays)
    if len(names) < 2:
        raise ValueError("label-flip needs a model with an output layer (weight and bias)")
    weight, bias = arrays[names[-2]], arrays[names[-1]]
    if bias.ndim != 1 or weight.ndim < 2 or weight.shape[0] != bias.shape[0]:
        raise ValueError(
            f"label-flip needs a model whose last two arrays are its output layer's weight "
            f"[C, ...] and bias [C]; {names[-2]!r} has shape {weight.shape} and "
            f"{names[-1]!r} {bias.shape}"
        )
    return {**arrays, names[-2]: weight[::-1].copy(), names[-1]: bias[::-1].copy()}
