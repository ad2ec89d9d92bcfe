"""What ``flwr run .`` packs: the app's Python code, never a node's ledger, a key or a config.

Built with Flower's own ``build_fab_from_disk`` (what ``flwr run`` and ``flwr build``
call) from a copy of the project holding what the README's by-hand example leaves in
the project folder.
"""

import io
import zipfile

import pytest
from flwr.cli.build import build_fab_from_disk

from server.deployment.flwr_cli import stage_app
from server.deployment.local_federation import PROJECT_ROOT

# What a by-hand deployment leaves under the project folder (README, "Deploy").
LEFTOVERS = {
    "nodes/0/privacy-ledger-digits-0123abcd.json": '{"format": 2, "runs": {}}',
    "nodes/0/privacy-ledger-digits-0123abcd.lock": "",
    "work/flwr-cli/config.toml": '[superlink.fedmodel]\naddress = "127.0.0.1:8000"\n',
    "work/logs/superlink.log": "...",
    "certs/ca.key": "-----BEGIN PRIVATE KEY-----\n",
    "certs/server.key": "-----BEGIN PRIVATE KEY-----\n",
    "certs/server.pem": "-----BEGIN CERTIFICATE-----\n",
    "keys/node-0": "-----BEGIN OPENSSH PRIVATE KEY-----\n",
    "runs/20261201-digits/metrics.json": "[]",
    "runs/20261201-digits/privacy/partition-0.json": "{}",
    "superexec.secret": "0123",
    "experiment.toml": "[grid]\n",
    "client/notes.md": "# not code\n",
    "client/node-settings.json": "{}",
}


@pytest.mark.parametrize("with_gitignore", [True, False])
def test_the_fab_holds_the_apps_python_code_only(tmp_path, with_gitignore):
    app = stage_app(PROJECT_ROOT, tmp_path / "fedmodel")
    if not with_gitignore:  # the app's fab-include alone must keep them out
        (app / ".gitignore").unlink()
    for name, text in LEFTOVERS.items():
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text(text)
    names = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(app))).namelist()
    code = [n for n in names if n not in ("pyproject.toml", ".info/CONTENT")]
    assert {"client/client_app.py", "server/server_app.py", "fedmodel/config.py"} <= set(code)
    assert all(
        n.endswith(".py") and n.split("/")[0] in {"client", "server", "fedmodel"} for n in code
    ), [n for n in code if not n.endswith(".py")]
    assert not set(LEFTOVERS) & set(names)
