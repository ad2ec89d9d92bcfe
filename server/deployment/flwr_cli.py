"""The ``flwr`` CLI, pointed at one SuperLink: submit and stream runs, list, stop, register."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from server.deployment.flower_processes import (
    DeploymentError,
    flower_env,
    flower_executable,
    stream_output,
    tail,
    write_cli_config,
)
from server.deployment.private_files import make_private_dir

CONNECTION = "fedmodel-local"


@dataclass(frozen=True)
class RunOutcome:
    """What ``flwr run`` reported for one submitted run."""

    run_id: int
    status: str
    log: str

    @property
    def succeeded(self) -> bool:
        return self.status == "finished:completed"


class FlwrCli:
    """Flower's ``flwr`` command with a private ``FLWR_HOME`` holding one connection.

    Parameters
    ----------
    home : path
        The CLI's ``FLWR_HOME``; its ``config.toml`` is written here.
    address : str
        The SuperLink's ``host:port``.
    root_certificates : path, optional
        The CA certificate of a SuperLink served over TLS; without it, insecure.
    env : mapping, optional
        Extra environment variables of every command.
    """

    def __init__(
        self,
        home: Path,
        address: str,
        *,
        root_certificates: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.home = home
        self.env = flower_env(home, env)
        write_cli_config(home, CONNECTION, address, root_certificates=root_certificates)

    def __call__(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``flwr *args``; raise :class:`DeploymentError` on failure."""
        result = subprocess.run(
            [flower_executable("flwr"), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise DeploymentError(
                f"`flwr {' '.join(args)}` failed with code {result.returncode}:\n"
                f"{tail(result.stdout + result.stderr)}"
            )
        return result

    def submit(
        self,
        app: Path,
        run_config: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> RunOutcome:
        """Submit the app in ``app`` with ``flwr run --stream``, stream its log, wait for its end.

        Parameters
        ----------
        app : path
            The app folder (see :func:`stage_app`).
        run_config : mapping, optional
            Run-config overrides (kebab-case keys, as in ``pyproject.toml``).
        timeout : float, optional
            Seconds to wait; past them the run is stopped (``flwr stop``) and this raises.
        on_line : callable, optional
            Called with every line of the run's log as it arrives.
        """
        with tempfile.NamedTemporaryFile(
            "w", suffix=".toml", dir=self.home, delete=False, encoding="utf-8"
        ) as overrides:
            overrides.write(tomli_w.dumps(dict(run_config or {})))
        lines: list[str] = []
        run_id: int | None = None

        def collect(line: str) -> None:
            nonlocal run_id
            lines.append(line)
            if run_id is None and (match := re.search(r"started run (\d+)", line)):
                run_id = int(match.group(1))
            if on_line is not None:
                on_line(line)

        command = [flower_executable("flwr"), "run", str(app), CONNECTION, "--stream"]
        try:
            code = stream_output(
                [*command, "--run-config", overrides.name],
                env=self.env,
                on_line=collect,
                timeout=timeout,
            )
        finally:
            Path(overrides.name).unlink(missing_ok=True)
        log = "".join(lines)
        if run_id is None:
            raise DeploymentError(f"`flwr run` did not start a run (code {code}):\n{tail(log)}")
        if code is None:
            self("stop", str(run_id), CONNECTION)
            raise DeploymentError(f"run {run_id} did not finish within {timeout} s")
        return RunOutcome(run_id=run_id, status=self.run_status(run_id), log=log)

    def run_status(self, run_id: int) -> str:
        """E.g. ``"finished:completed"`` or ``"finished:failed"`` (``flwr list``)."""
        out = self("list", "--run-id", str(run_id), CONNECTION, "--format", "json").stdout
        runs = json.loads(out[out.index("{") :])["runs"]
        return str(runs[0]["status"])

    def list_nodes(self) -> list[dict[str, Any]]:
        """The SuperLink's view of the nodes (``flwr supernode list --format json``)."""
        out = self("supernode", "list", CONNECTION, "--format", "json").stdout
        return list(json.loads(out[out.index("{") :])["nodes"])

    def register(self, public_key: Path, name: str) -> None:
        """``flwr supernode register`` a node's public key with the SuperLink."""
        self("supernode", "register", str(public_key), CONNECTION, "--name", name)


def stage_app(app_dir: Path, staged: Path) -> Path:
    """Copy into ``staged`` only what the app's FAB holds, to submit with ``flwr run``.

    ``flwr run DIR`` walks all of DIR before filtering, ``.venv`` included (seconds for a
    torch install); the copy has ``pyproject.toml``, ``.gitignore`` and the top-level
    Python packages only.
    """
    shutil.rmtree(staged, ignore_errors=True)
    make_private_dir(staged)
    for name in ("pyproject.toml", ".gitignore"):
        if (app_dir / name).exists():
            shutil.copyfile(app_dir / name, staged / name)
    for package in sorted(app_dir.iterdir()):
        if (package / "__init__.py").is_file() and not package.name.startswith("."):
            shutil.copytree(
                package,
                staged / package.name,
                ignore=shutil.ignore_patterns("__pycache__"),
                copy_function=shutil.copyfile,
            )
    # The copy is the deployment's, in its 0700 work folder: owner-only, whatever the umask.
    for folder, _, files in os.walk(staged):
        os.chmod(folder, 0o700)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o600)
    return staged
