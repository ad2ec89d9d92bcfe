"""The ServerApp's checkpoints: written after rounds, read back to resume a run.

What a checkpoint holds, how it is stored and validated is the domain's
(:mod:`fedmodel.results.checkpoint`); this module gathers the ServerApp's part of it and
puts it back:

- the global weights, the round, the run config;
- the strategy's own state, layer by layer down the wrapper chain (each wrapper keeps the
  strategy it wraps as ``.strategy``): a layer with ``state_dict()`` / ``load_state_dict()``
  gives its own; of any other layer the attributes in :data:`STATE_ATTRIBUTES` that it has
  (Flower's server optimisers: FedOpt's ``current_arrays``, FedAdam / FedYogi /
  FedAdagrad's ``m_t`` and ``v_t``, FedAvgM's ``current_arrays`` and ``momentum_vector``,
  the adaptive clipping norm; ClientTracking's per-client ``ledgers`` and steps seen);
- the :class:`~server.round_recorder.RoundRecorder`'s state and the RNG states;
- through the Grid, the nodes' state, when the Grid keeps it (:class:`NodeStateKeeper`:
  the in-process engine writes its nodes' Contexts beside the server's checkpoint). On
  Flower's runtimes a node's record of what it spent is its ``state-dir`` ledger, which
  a resumed run (a new Flower run) keeps counting.

**Resuming**: Flower's ``start`` numbers rounds from 1, so a run resumed after round ``k``
of ``N`` runs ``N - k`` rounds of :class:`~server.strategies.round_offset.RoundOffset`
(true round numbers everywhere), from the checkpoint's weights, and instead of Flower's
initial evaluation restores the RNG states, the last thing before round ``k + 1``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from flwr.app import Array, ArrayRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import nn

from fedmodel.config import RunConfig
from fedmodel.records import record_to_state_dict
from fedmodel.results.checkpoint import (
    Checkpoint,
    CheckpointError,
    check_state_dict_fits,
    load_initial_model,
    rng_state,
    set_rng_state,
)
from server.round_recorder import RoundRecorder
from server.strategies.round_offset import RoundOffset

# Attributes that change as a strategy runs (the rest is its configuration, rebuilt from
# the run config): Flower's strategies (flwr.serverapp.strategy, 1.42) and ours.
STATE_ATTRIBUTES = (
    "current_arrays",  # FedOpt family, FedAvgM, QFedAvg, DP wrappers: the last global model
    "m_t",  # FedAdam, FedYogi, FedAdagrad: first moment
    "v_t",  # FedAdam, FedYogi, FedAdagrad: second moment
    "momentum_vector",  # FedAvgM: server momentum
    "clipping_norm",  # DifferentialPrivacy*AdaptiveClipping: the adapted norm
    "ledgers",  # ClientTracking: each client's latest ledger
    "_steps_seen",  # ClientTracking: the steps each client's ledger held when last accepted
)
_ARRAY_RECORD = "__flwr_array_record__"

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


@runtime_checkable
class NodeStateKeeper(Protocol):
    """A Grid whose nodes' state the server can have saved and restored with its own.

    The in-process engine's Grid is one (``simulations/engines/inprocess.py``): it writes
    every node's Context into the run folder's checkpoint and reads it back.
    """

    def save_node_states(self, run_dir: Path, server_round: int) -> None: ...

    def restore_node_states(self, run_dir: Path, server_round: int) -> None: ...


# -- the strategy's own state -----------------------------------------------------------


def strategy_layers(strategy: Strategy) -> Iterator[Strategy]:
    """The strategy and every strategy it wraps, outermost first."""
    layer: Any = strategy
    while isinstance(layer, Strategy):
        yield layer
        layer = getattr(layer, "strategy", None)


def strategy_state_dict(strategy: Strategy) -> list[dict[str, Any]]:
    """The state of every layer of ``strategy`` (see the module docstring), outermost first."""
    states = []
    for layer in strategy_layers(strategy):
        if _has_own_state(layer):
            state = {"own": _to_plain(layer.state_dict())}  # type: ignore[attr-defined]
        else:
            present = vars(layer)
            state = {name: _to_plain(present[name]) for name in STATE_ATTRIBUTES if name in present}
        states.append({"class": type(layer).__qualname__, "state": state})
    return states


def load_strategy_state(strategy: Strategy, states: list[dict[str, Any]]) -> None:
    """Put back what :func:`strategy_state_dict` returned into a freshly built ``strategy``."""
    layers = list(strategy_layers(strategy))
    classes = [type(layer).__qualname__ for layer in layers]
    saved = [state.get("class") for state in states] if isinstance(states, list) else None
    if saved != classes:
        raise CheckpointError(
            f"the checkpoint holds the state of strategy {saved}; this run builds {classes}"
        )
    for layer, entry in zip(layers, states, strict=True):
        state = entry["state"]
        if _has_own_state(layer):
            layer.load_state_dict(_from_plain(state["own"]))  # type: ignore[attr-defined]
        else:
            for name, value in state.items():
                setattr(layer, name, _from_plain(value))


def _has_own_state(layer: object) -> bool:
    return callable(getattr(layer, "state_dict", None)) and callable(
        getattr(layer, "load_state_dict", None)
    )


def _to_plain(value: Any) -> Any:
    """ArrayRecords as their exact Array fields; containers walked; the rest as it is."""
    if isinstance(value, ArrayRecord):
        return {
            _ARRAY_RECORD: [
                (key, array.dtype, tuple(array.shape), array.stype, array.data)
                for key, array in value.items()
            ]
        }
    if isinstance(value, dict):
        return {key: _to_plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        items = [_to_plain(item) for item in value]
        return items if isinstance(value, list) else tuple(items)
    return value


def _from_plain(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {_ARRAY_RECORD}:
            return ArrayRecord(
                {
                    key: Array(dtype=dtype, shape=tuple(shape), stype=stype, data=data)
                    for key, dtype, shape, stype, data in value[_ARRAY_RECORD]
                }
            )
        return {key: _from_plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_from_plain(item) for item in value)
    return value


# -- one run's checkpoints ----------------------------------------------------------------


@dataclass(frozen=True)
class StartPlan:
    """How to call ``strategy.start``: fresh from round 1, or resumed after ``first_round - 1``."""

    strategy: Strategy
    initial_arrays: ArrayRecord
    num_rounds: int
    evaluate_fn: EvaluateFn
    first_round: int


class RunCheckpoints:
    """Checkpoint one run after every ``checkpoint-every`` rounds; resume it from one.

    Parameters
    ----------
    config : RunConfig
        The run's config (``checkpoint-every``, ``resume``, ``initial-model``).
    run_dir : path
        The run folder.
    grid : Grid
        The Grid Flower gave the ServerApp, before any wrapper: a
        :class:`NodeStateKeeper` has its nodes' state saved and restored too.
    """

    def __init__(self, config: RunConfig, *, run_dir: str | Path, grid: Grid) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.nodes = grid if isinstance(grid, NodeStateKeeper) else None
        self.resumed: Checkpoint | None = None

    def initial_arrays(self, model: nn.Module) -> ArrayRecord:
        """The weights round 1 starts from, or that a resumed run continues from.

        Everything is checked here, before the run writes anything: the checkpoint
        (readable, of this run config, unfinished, fitting ``model``) and the nodes'
        saved state; or the file ``initial-model`` names (exists, fits ``model``).
        """
        if self.config.resume:
            checkpoint = Checkpoint.load(self.run_dir)
            checkpoint.check_config(self.config)
            check_state_dict_fits(
                model, checkpoint.model, source=f"the checkpoint of round {checkpoint.round}"
            )
            if self.nodes is not None:
                self.nodes.restore_node_states(self.run_dir, checkpoint.round)
            self.resumed = checkpoint
            return ArrayRecord(dict(checkpoint.model))
        if self.config.initial_model:
            load_initial_model(model, self.config.initial_model)
        return ArrayRecord(model.state_dict())

    def plan(
        self, strategy: Strategy, *, recorder: RoundRecorder, initial_arrays: ArrayRecord
    ) -> StartPlan:
        """What to start: the strategy, from which weights, for how many rounds.

        When resuming, the strategy's and the recorder's state are restored here.
        """
        total = self.config.num_server_rounds
        checkpoint = self.resumed
        if checkpoint is None:
            evaluate = self._evaluate_fn(strategy, recorder, resumed=False)
            return StartPlan(strategy, initial_arrays, total, evaluate, first_round=1)
        load_strategy_state(strategy, checkpoint.strategy)
        recorder.load_state_dict(checkpoint.recorder)
        offset = RoundOffset(strategy, offset=checkpoint.round)
        evaluate = offset.evaluate_fn(self._evaluate_fn(strategy, recorder, resumed=True))
        return StartPlan(
            offset, initial_arrays, total - checkpoint.round, evaluate, checkpoint.round + 1
        )

    def _evaluate_fn(
        self, strategy: Strategy, recorder: RoundRecorder, *, resumed: bool
    ) -> EvaluateFn:
        """The recorder, then a checkpoint when due; a resumed run's round 0 restores RNGs."""

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            if server_round == 0 and resumed:
                # Round k was evaluated before the crash; an evaluation now would draw
                # from torch's RNG (DataLoader seeds), so restore it only after.
                assert self.resumed is not None
                set_rng_state(self.resumed.rng)
                return None
            metrics = recorder(server_round, arrays)
            if server_round > 0 and self.due(server_round):
                self.save(server_round, arrays, strategy=strategy, recorder=recorder)
            return metrics

        return evaluate

    def due(self, server_round: int) -> bool:
        """Whether round ``server_round`` ends with a checkpoint (every N, and the last)."""
        every = self.config.checkpoint_every
        return every > 0 and (
            server_round % every == 0 or server_round == self.config.num_server_rounds
        )

    def save(
        self, server_round: int, arrays: ArrayRecord, *, strategy: Strategy, recorder: RoundRecorder
    ) -> None:
        """Write the checkpoint of ``server_round``: the nodes' state first, then the server's."""
        if self.nodes is not None:
            self.nodes.save_node_states(self.run_dir, server_round)
        Checkpoint(
            round=server_round,
            run_config=self.config.to_mapping(),
            model=dict(record_to_state_dict(arrays)),  # to_torch_state_dict's tensors, faster
            strategy=strategy_state_dict(strategy),
            recorder=recorder.state_dict(),
            rng=rng_state(),
        ).save(self.run_dir)

    def resume_line(self) -> str | None:
        """What a resumed run prints first; None for a fresh run."""
        if self.resumed is None:
            return None
        done, total = self.resumed.round, self.config.num_server_rounds
        nodes = (
            "every node's Context restored"
            if self.nodes is not None
            else "each node's ledger in its state-dir keeps counting"
        )
        return (
            f"Resuming {self.run_dir} after round {done} of {total} from its checkpoint ({nodes})"
        )
