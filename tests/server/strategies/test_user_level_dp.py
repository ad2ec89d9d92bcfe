"""User-level DP (DP-FedAvg): the mean it noises, the ε it composes, the budget it keeps."""

import logging
import random

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedmodel.config import ConfigError, RunConfig
from fedmodel.privacy.user_level import UserLevelPlan
from fedmodel.results.checkpoint import read_state_file, write_state_file
from server.checkpointing import load_strategy_state, strategy_state_dict
from server.strategies.client_tracking import ClientTracking
from server.strategies.cohort_sampling import CohortSampling
from server.strategies.user_level_dp import (
    EqualWeightMean,
    UserBudgetReached,
    check_user_level_strategy,
    sampled_and_private,
    user_level_layer,
    with_user_level_dp,
)

dp_accounting = pytest.importorskip("dp_accounting")
logging.getLogger("absl").setLevel(logging.ERROR)

# The reference: z = 1, 10 of 100 clients a round, δ = 1e-5, Poisson add/remove.
REFERENCE_POISSON = {1: 2.133, 2: 2.413, 3: 2.607, 10: 3.442}


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


class _Nodes:
    """What FedAvg.configure_train asks of a Grid: the connected node ids."""

    def __init__(self, count: int) -> None:
        self.ids = list(range(1, count + 1))

    def get_node_ids(self):
        return list(self.ids)


def _global(size: int = 4) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.zeros(size, dtype=np.float32))})


def _reply(sent: Message, update: np.ndarray, *, num_examples: int) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(update.astype(np.float32))}),
            "metrics": MetricRecord({"num-examples": num_examples}),
        }
    )
    return Message(content, reply_to=sent)


def _plan(**changes) -> UserLevelPlan:
    values = dict(
        noise_multiplier=1.0,
        clipping_norm=1.0,
        clipping="fixed",
        clients_per_round=10,
        population=100,
        sampling="poisson",
        delta=1e-5,
    )
    return UserLevelPlan(**{**values, **changes})


def _private(plan: UserLevelPlan, *, rng: random.Random | None = None):
    sampled = CohortSampling(
        FedAvg(fraction_train=1.0, fraction_evaluate=0.0),
        sampling=plan.sampling,
        sample_rate=plan.sample_rate,
        cohort_size=plan.clients_per_round,
        rng=rng or random.Random(0),
    )
    return with_user_level_dp(sampled, plan=plan)


def _run_round(strategy, server_round: int, grid: _Nodes, *, size: int = 4, scale: float = 0.0):
    sent = list(strategy.configure_train(server_round, _global(size), ConfigRecord(), grid))
    replies = [_reply(m, np.full(size, scale), num_examples=10) for m in sent]
    return sent, strategy.aggregate_train(server_round, replies)


def _dp_accounting_epsilon(event, rounds: int, *, relation) -> float:
    accountant = dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
    accountant.compose(event, rounds)
    return accountant.get_epsilon(1e-5)


def test_poisson_user_level_epsilon_equals_dp_accounting_after_each_round():
    """ε after R rounds = Google's dp_accounting for R Poisson-sampled Gaussians, to 1e-6."""
    plan = _plan()
    strategy, grid = _private(plan), _Nodes(100)
    event = dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.0))
    relation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    for server_round in range(1, 11):
        _run_round(strategy, server_round, grid, scale=0.01)
        expected = _dp_accounting_epsilon(event, server_round, relation=relation)
        assert strategy.epsilon() == pytest.approx(expected, abs=1e-6)
        if server_round in REFERENCE_POISSON:
            assert strategy.epsilon() == pytest.approx(REFERENCE_POISSON[server_round], abs=5e-4)
    assert strategy.rounds_composed == 10
    assert "user-level ε = 3.4416 at δ = 1e-05 (RDP accountant, 10 noised rounds" in (
        strategy.describe()
    )


def test_fixed_cohort_is_accounted_replace_one_with_twice_the_sensitivity():
    """m of N without replacement: replace-one, the sum moves by 2C, so z / 2 is composed."""
    plan = _plan(sampling="fixed")
    strategy, grid = _private(plan), _Nodes(100)
    for server_round in (1, 2, 3):
        sent, _ = _run_round(strategy, server_round, grid)
        assert len(sent) == 10  # exactly m
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        100, 10, dp_accounting.GaussianDpEvent(0.5)
    )
    relation = dp_accounting.NeighboringRelation.REPLACE_ONE
    expected = _dp_accounting_epsilon(event, 3, relation=relation)
    assert strategy.epsilon() == pytest.approx(expected, abs=1e-6)


def test_max_epsilon_stops_before_the_round_that_would_exceed_it():
    """No round runs whose ε would pass max-epsilon; the rounds before it are all composed."""
    budget = 2.5  # between the ε of round 2 (2.413) and round 3 (2.607)
    strategy, grid = _private(_plan(max_epsilon=budget)), _Nodes(100)
    _run_round(strategy, 1, grid)
    _run_round(strategy, 2, grid)
    with pytest.raises(UserBudgetReached, match="before round 3.*max-epsilon = 2.5"):
        strategy.configure_train(3, _global(), ConfigRecord(), grid)
    assert strategy.rounds_composed == 2
    assert strategy.epsilon() <= budget
    assert [r["epsilon"] for r in strategy.rounds] == pytest.approx([2.133, 2.413], abs=5e-4)


def test_fedavg_example_weights_are_replaced_by_equal_weights_and_a_fixed_denominator():
    """Weights [1000, 10, 10] would let one client dominate; each reply counts the same,
    and the sum is divided by m = 5 although only 3 replied (2 missing: zero updates)."""
    mean = EqualWeightMean(FedAvg(fraction_train=1.0, fraction_evaluate=0.0), cohort_size=5)
    sent = list(mean.configure_train(1, _global(), ConfigRecord(), _Nodes(3)))
    updates = [np.array([1.0, 0, 0, 0]), np.array([0, 1.0, 0, 0]), np.array([0, 0, 1.0, 0])]
    replies = [
        _reply(m, u, num_examples=n) for m, u, n in zip(sent, updates, [1000, 10, 10], strict=True)
    ]
    arrays, _ = mean.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), [0.2, 0.2, 0.2, 0.0], rtol=1e-6)


def test_noise_on_the_mean_has_standard_deviation_z_c_over_m():
    """Every client returns the global model: what is left is the noise, std z * C / m."""
    plan = _plan(
        noise_multiplier=2.0, clipping_norm=0.5, clients_per_round=4, population=8, sampling="fixed"
    )
    strategy = _private(plan)
    _, (arrays, _) = _run_round(strategy, 1, _Nodes(8), size=200_000, scale=1e-4)
    assert np.std(arrays["w"].numpy()) == pytest.approx(2.0 * 0.5 / 4, rel=0.02)
    assert strategy.rounds[0]["noise_std"] == pytest.approx(0.25)
    # Clients that return the global model unchanged (Flower's clipping would divide by
    # their zero norm): still a release of the noise alone, and composed.
    _, (arrays, _) = _run_round(strategy, 2, _Nodes(8), size=200_000, scale=0.0)
    assert np.std(arrays["w"].numpy()) == pytest.approx(0.25, rel=0.02)
    assert strategy.rounds_composed == 2


def test_updates_are_clipped_to_the_clipping_norm_before_averaging():
    plan = _plan(
        noise_multiplier=1e-6,
        clipping_norm=1.0,
        clients_per_round=2,
        population=2,
        sampling="fixed",
    )
    strategy = _private(plan)
    _, (arrays, _) = _run_round(strategy, 1, _Nodes(2), size=4, scale=10.0)  # norm 20 each
    # Each update clipped to norm 1 (0.5 per entry); mean of two equal ones: the same.
    np.testing.assert_allclose(arrays["w"].numpy(), np.full(4, 0.5), atol=1e-4)


def test_a_round_without_any_update_releases_the_noise_alone_and_is_composed():
    # Skipping the round would reveal that the cohort was empty: the round is released
    # (global model + N(0, (zC/m)^2)) and composed like any other, through ClientTracking.
    private = _private(_plan(noise_multiplier=1.0, clipping_norm=1.0, clients_per_round=10))
    tracked, grid = ClientTracking(private, require_ledger=False, min_train_replies=0), _Nodes(100)
    list(tracked.configure_train(1, _global(size=20_000), ConfigRecord(), grid))
    arrays, _ = tracked.aggregate_train(1, [])
    assert arrays is not None
    assert private.rounds_composed == 1
    assert private.epsilon() == pytest.approx(REFERENCE_POISSON[1], abs=1e-3)
    assert np.std(arrays["w"].numpy()) == pytest.approx(1.0 / 10, rel=0.05)


def test_poisson_cohorts_have_the_expected_size_and_vary():
    sampled = CohortSampling(
        FedAvg(fraction_train=1.0, fraction_evaluate=0.0),
        sampling="poisson",
        sample_rate=0.1,
        rng=random.Random(1),
    )
    sizes = [
        len(list(sampled.configure_train(r, _global(), ConfigRecord(), _Nodes(200))))
        for r in range(1, 51)
    ]
    assert 18 < sum(sizes) / len(sizes) < 22  # q * N = 20
    assert len(set(sizes)) > 3


def test_a_checkpoint_restores_the_composed_rounds(tmp_path):
    """Through ClientTracking (which deep-copies its strategy each round) and a checkpoint
    file, a resumed run keeps counting from the ε already spent, never from 0."""
    plan = _plan()
    tracking = ClientTracking(_private(plan, rng=random.SystemRandom()), require_ledger=False)
    grid = _Nodes(100)
    for server_round in (1, 2):
        _run_round(tracking, server_round, grid, scale=0.01)
    assert user_level_layer(tracking).rounds_composed == 2
    write_state_file(tmp_path / "s.pt", "server", {"strategy": strategy_state_dict(tracking)})
    fresh = ClientTracking(_private(plan), require_ledger=False)
    load_strategy_state(fresh, read_state_file(tmp_path / "s.pt", "server")["strategy"])
    restored = user_level_layer(fresh)
    assert restored.rounds_composed == 2
    assert restored.epsilon() == user_level_layer(tracking).epsilon()
    assert [r["round"] for r in restored.rounds] == [1, 2]


@pytest.mark.parametrize("name", ["fedadam", "fedmedian", "krum", "fedavgm"])
def test_strategies_that_are_not_a_mean_are_refused_up_front(name):
    config = RunConfig(strategy=name, dp=False, privacy_unit="user")
    with pytest.raises(ConfigError, match=f"strategy '{name}' cannot be combined"):
        check_user_level_strategy(config)
    check_user_level_strategy(RunConfig(strategy="fedprox", dp=False, privacy_unit="user"))


def test_user_level_layer_is_found_under_other_wrappers():
    strategy = _private(_plan())
    assert user_level_layer(strategy) is strategy
    assert user_level_layer(FedAvg()) is None


def test_delta_must_be_below_one_over_the_number_of_clients():
    config = RunConfig(dp=False, privacy_unit="user", delta=0.01)
    with pytest.raises(ConfigError, match="'delta' = 0.01 .* below 1 / 200"):
        sampled_and_private(FedAvg(), config=config, num_nodes=200)
    with pytest.raises(ConfigError, match="'clients-per-round' = 30 .* at most the 20 nodes"):
        sampled_and_private(FedAvg(), config=config.replace(clients_per_round=30), num_nodes=20)


def test_a_fixed_cohort_shrinks_when_fewer_nodes_are_connected_than_accounted():
    """10 of 100 accounted; with 50 connected, 5 are sampled: no node above q = 0.1."""
    sampled = CohortSampling(
        FedAvg(fraction_train=1.0, fraction_evaluate=0.0),
        sampling="fixed",
        cohort_size=10,
        population=100,
        rng=random.Random(0),
    )
    sent = sampled.configure_train(1, _global(), ConfigRecord(), _Nodes(50))
    assert len(list(sent)) == 5
    assert len(list(sampled.configure_train(2, _global(), ConfigRecord(), _Nodes(100)))) == 10
