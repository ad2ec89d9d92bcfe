"""A node refuses a submitted app (FAB) that is not the app its operator installed."""

import io
import zipfile

import pytest
from flwr.cli.build import build_fab_from_disk
from flwr.clientapp import utils as clientapp_loading
from flwr.clientapp.client_app import LoadClientAppError
from flwr.server import run_serverapp as serverapp_loading

from server.deployment import warm_executor
from server.deployment.app_pin import AppMismatch, check_app
from server.deployment.flwr_cli import stage_app
from server.deployment.local_federation import PROJECT_ROOT


@pytest.fixture
def fab_dir(tmp_path):
    """The project's FAB as Flower unpacks it on a node."""
    fab = build_fab_from_disk(stage_app(PROJECT_ROOT, tmp_path / "fedmodel"))
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(io.BytesIO(fab)).extractall(unpacked)
    return unpacked


def test_the_installed_app_passes_and_a_changed_or_added_file_is_refused(fab_dir):
    check_app(fab_dir)  # this project, installed in this environment
    with open(fab_dir / "client" / "client_app.py", "a", encoding="utf-8") as module:
        module.write("\nimport os  # a changed ClientApp\n")
    (fab_dir / "client" / "exfiltrate.py").write_text("print('hi')\n")
    with pytest.raises(AppMismatch) as refusal:
        check_app(fab_dir)
    message = str(refusal.value)
    assert "client/client_app.py" in message and "client/exfiltrate.py (not installed)" in message
    assert "installed on this node" in message


def test_an_app_that_is_not_installed_at_all_is_refused(fab_dir):
    pyproject = fab_dir / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('name = "fedmodel"', 'name = "other-app"'))
    with pytest.raises(AppMismatch, match="'other-app' is not installed on this node"):
        check_app(fab_dir)


def test_the_launchers_pin_makes_flowers_loader_refuse_before_importing(fab_dir, monkeypatch):
    for module in (clientapp_loading, serverapp_loading):  # restored after the test
        monkeypatch.setattr(module, "load_app", module.load_app)
    warm_executor._pin_installed_app()
    (fab_dir / "client" / "client_app.py").write_text("raise SystemExit('imported!')\n")
    with pytest.raises(LoadClientAppError, match="refused: the submitted app differs"):
        clientapp_loading.load_app("client.client_app:app", LoadClientAppError, fab_dir)
