"""Run-config ``model = "package.module:factory"``: the user's own ``nn.Module``."""

import logging
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from fedmodel.config import ConfigError
from fedmodel.models import ModelSettings, build_model, dp_check
from simulations import simulate

DP = ModelSettings(dp=True)


@pytest.fixture(autouse=True)
def user_models_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


def test_a_factory_is_called_with_the_input_shape_and_class_count():
    model = build_model("user_models:tiny_cnn", input_shape=(1, 8, 8), num_classes=3, settings=DP)
    assert model[-1].out_features == 3 and model[0].in_channels == 1


def test_a_batch_norm_factory_is_refused_under_dp_naming_the_layer():
    with pytest.raises(ConfigError) as error:
        build_model("user_models:batch_norm_cnn", input_shape=(1, 8, 8), num_classes=3, settings=DP)
    message = str(error.value)
    assert "'model' = 'user_models:batch_norm_cnn'" in message
    assert "layer '1' (BatchNorm2d): BatchNorm cannot support training with differential" in message
    assert "fix-model = true" in message


def test_fix_model_replaces_batch_norm_and_says_so(caplog, monkeypatch):
    monkeypatch.setattr(dp_check, "_reported", set())  # said once per process
    with caplog.at_level(logging.WARNING, logger="fedmodel.models.dp_check"):
        model = build_model(
            "user_models:batch_norm_cnn",
            input_shape=(1, 8, 8),
            num_classes=3,
            settings=ModelSettings(dp=True, fix_model=True),
        )
    assert isinstance(model[1], nn.GroupNorm)
    assert "1: BatchNorm2d -> GroupNorm" in caplog.text


def test_without_dp_a_batch_norm_model_is_built_as_it_is():
    model = build_model(
        "user_models:batch_norm_cnn",
        input_shape=(1, 8, 8),
        num_classes=3,
        settings=ModelSettings(dp=False),
    )
    assert isinstance(model[1], nn.BatchNorm2d)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (
            "no_such_module_xyz:build",
            "cannot import module 'no_such_module_xyz' (ModuleNotFoundError",
        ),
        ("user_models:missing", "module 'user_models' has no callable 'missing'"),
        ("user_models:not_a_module", "not_a_module returned str, not a torch.nn.Module"),
    ],
)
def test_unusable_factories_are_one_clear_error_naming_key_and_value(path, message):
    with pytest.raises(ConfigError, match=f"^run-config key 'model' = '{path}': ") as error:
        build_model(path, input_shape=(1, 8, 8), num_classes=3, settings=DP)
    assert message in str(error.value)


def test_a_factory_model_trains_end_to_end_under_dp(tmp_path):
    result = simulate(
        {
            "model": "user_models:tiny_cnn",
            "num-server-rounds": 2,
            "target-epsilon": 0.0,
            "noise-multiplier": 1.0,
            "learning-rate": 0.5,
            "run-dir": str(tmp_path / "run"),
        },
        num_clients=3,
    )
    assert len(result.rounds) == 2 and result.rounds[-1].epsilon_max > 0
    assert result.rounds[-1].test_accuracy > 0.2  # 10 digit classes: above chance


def test_a_batch_norm_factory_trains_with_fix_model(tmp_path):
    config = {
        "model": "user_models:batch_norm_cnn",
        "num-server-rounds": 1,
        "run-dir": str(tmp_path / "refused"),
    }
    with pytest.raises(ConfigError, match="layer '1' \\(BatchNorm2d\\)"):
        simulate(config, num_clients=3)
    assert not (tmp_path / "refused").exists()  # refused before anything is written
    config = {**config, "fix-model": True, "run-dir": str(tmp_path / "fixed")}
    assert len(simulate(config, num_clients=3).rounds) == 1


def test_the_readme_example_factory_builds_a_dp_trainable_model():
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    start = readme.index("\n## Your own model\n")
    section = readme[start : readme.index("\n## ", start + 1)]
    code = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    namespace: dict = {}
    exec(compile(code, "README.md (Your own model)", "exec"), namespace)
    model = namespace["small_cnn"](input_shape=(1, 8, 8), num_classes=10)
    assert dp_check.incompatible_layers(model) == []
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
