"""The user-level DP plan and the run-config keys that choose it."""

import pytest

from fedmodel.config import ConfigError, RunConfig
from fedmodel.privacy.user_level import UserLevelPlan, expected_cohort, user_level_plan

PLAN = dict(
    noise_multiplier=1.0,
    clipping_norm=0.5,
    clipping="fixed",
    clients_per_round=10,
    population=100,
    sampling="poisson",
    delta=1e-5,
)


def test_poisson_is_add_remove_with_z_and_fixed_is_replace_one_with_half_z():
    poisson = UserLevelPlan(**PLAN)
    assert poisson.sample_rate == 0.1
    assert poisson.neighbouring_relation == "add-or-remove-one"
    assert poisson.accounted_noise_multiplier == 1.0
    fixed = UserLevelPlan(**{**PLAN, "sampling": "fixed"})
    assert fixed.neighbouring_relation == "replace-one"
    assert fixed.accounted_noise_multiplier == 0.5  # replacing one client moves the sum 2C
    assert poisson.noise_std() == pytest.approx(1.0 * 0.5 / 10)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"clipping_norm": -1.0}, "clipping_norm"),
        ({"clients_per_round": 101}, "clients_per_round"),
        ({"sampling": "uniform"}, "sampling"),
        ({"delta": 1.0}, "delta"),
    ],
)
def test_a_bad_plan_is_refused_naming_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        UserLevelPlan(**{**PLAN, **change})


def test_describe_names_epsilon_delta_accountant_unit_and_what_was_composed():
    line = UserLevelPlan(**PLAN).describe(epsilon=2.1330, rounds=1)
    assert line.startswith("user-level ε = 2.1330 at δ = 1e-05 (RDP accountant, 1 noised round")
    assert "Poisson-sampled, q = 0.1, add/remove one client" in line


def test_the_cohort_defaults_to_what_flower_would_sample():
    config = RunConfig(dp=False, privacy_unit="user", fraction_train=0.35)
    assert expected_cohort(config, population=20) == 7
    assert expected_cohort(config.replace(clients_per_round=4), population=20) == 4
    plan = user_level_plan(config.replace(client_sampling="poisson"), population=20)
    assert plan.sample_rate == pytest.approx(7 / 20)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"privacy_unit": "user"}, "'privacy-unit' = 'user' .* only with dp = false"),
        ({"privacy_unit": "both", "dp": False}, "'privacy-unit' = 'both'"),
        ({"privacy_unit": "group"}, "'privacy-unit' = 'group' is not known"),
        ({"max_epsilon": 3.0}, "'max-epsilon' = 3.0 is read only under user-level DP"),
        ({"clients_per_round": 5}, "'clients-per-round' = 5"),
        (
            {"privacy_unit": "both", "user_clipping": "adaptive", "client_sampling": "poisson"},
            "'user-clipping' = 'adaptive'",
        ),
        (
            {"privacy_unit": "both", "client_sampling": "poisson", "min_train_replies": 2},
            "'min-train-replies' = 2",
        ),
        ({"privacy_unit": "both", "user_noise_multiplier": 0.0}, "'user-noise-multiplier'"),
        ({"privacy_unit": "both", "max_epsilon": -1.0}, "'max-epsilon' = -1.0"),
    ],
)
def test_bad_user_level_config_is_one_clear_error(values, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**values)


def test_user_level_configs_that_fit_are_accepted():
    RunConfig(privacy_unit="both", client_sampling="poisson", max_epsilon=4.0)
    RunConfig(dp=False, privacy_unit="user", user_clipping="adaptive", clients_per_round=8)
    RunConfig(client_sampling="poisson", clients_per_round=3)  # record-level, own cohort
