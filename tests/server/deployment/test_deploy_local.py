"""deploy_local validates the run config before it starts or writes anything."""

import pytest

from fedmodel.config import ConfigError
from server.deployment.deploy_local import deploy_local


def test_a_bad_config_is_refused_before_anything_starts(tmp_path):
    with pytest.raises(ConfigError, match="'round-timeout' = 0 is out of range"):
        deploy_local({"round-timeout": 0}, num_clients=2, work_dir=tmp_path / "w")
    assert not (tmp_path / "w").exists()
