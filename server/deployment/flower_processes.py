"""Starting, watching and stopping Flower's own processes on this machine.

One home for what every caller of Flower's runtime (``flower-superlink``,
``flower-supernode``, ``flwr``) needs: the environment they run in, a free loopback port,
where the commands are, a process in its own group with its output in a log file, the
SuperLink's health check, the ``flwr`` CLI's ``config.toml``, Flower's ``key=value``
config arguments, and streaming a command's output line by line under a timeout. Used by
the local federation (:mod:`server.deployment.local_federation`) and the Ray engine.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w

from server.deployment.private_files import (
    PRIVATE_UMASK,
    make_private_dir,
    open_private_log,
    write_file,
)

LOOPBACK = "127.0.0.1"


class DeploymentError(RuntimeError):
    """A Flower process failed to start, or a run did not finish."""


def flower_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a Flower process: private home, no telemetry, our venv first."""
    env = dict(os.environ)
    env.update(FLWR_HOME=str(flwr_home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    # Flower starts its helpers (flower-superexec, flwr-clientapp, flwr-serverapp,
    # flwr-simulation) by name: they must come from the environment fedmodel is in.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(extra or {})
    return env


def flower_executable(name: str) -> str:
    """Path of a Flower command: next to this Python, else on ``PATH``."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.is_file() else shutil.which(name)
    if not found:
        raise DeploymentError(f"{name} not found next to {sys.executable}; is flwr installed?")
    return found


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    """Send ``sig`` to ``process`` and every child it started (the group it leads)."""
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_group(process: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM the group ``process`` leads, SIGKILL what is left after ``timeout`` s; reap it."""
    signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    # Children may outlive their leader's graceful exit: kill the group regardless.
    signal_group(process, signal.SIGKILL)
    process.wait()


def tail(text: str, lines: int = 30) -> str:
    """The last ``lines`` lines of ``text`` (of a log, for an error message)."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


class ManagedProcess:
    """A process started in its own process group, with its output in a log file.

    The log is ``0600`` in a ``0700`` folder, and the process runs under umask ``077``:
    what Flower writes (its ``FLWR_HOME``, FAB copies, a node's ledgers, a run folder)
    is its operator's only, whatever the caller's umask.
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str],
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        with os.fdopen(open_private_log(log_path), "ab") as log:
            self.popen = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
                umask=PRIVATE_UMASK,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole group at once, as a crash would, and reap the process."""
        signal_group(self.popen, signal.SIGKILL)
        self.popen.wait()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the group, then SIGKILL whatever is left after ``timeout`` seconds."""
        stop_group(self.popen, timeout)

    def wait_for_log(self, pattern: str, *, timeout: float, count: int = 1) -> re.Match[str]:
        """Wait until ``pattern`` occurs ``count`` times in the log; fail if the process exits."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            matches = list(regex.finditer(self.log()))
            if len(matches) >= count:
                return matches[count - 1]
            if not self.alive():
                raise DeploymentError(
                    f"{self.name} exited with code {self.popen.returncode} before "
                    f"printing {pattern!r}; its log ({self.log_path}) ends:\n{tail(self.log())}"
                )
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"{self.name} did not print {pattern!r} within {timeout:.0f} s; "
                    f"its log ({self.log_path}) ends:\n{tail(self.log())}"
                )
            time.sleep(0.1)


def wait_for_health(
    superlink: ManagedProcess, address: str, *, timeout: float, ca_cert: Path | None = None
) -> None:
    """Wait until the SuperLink at ``address`` answers ``/health`` (over TLS with ``ca_cert``)."""
    scheme = "https" if ca_cert is not None else "http"
    context = ssl.create_default_context(cafile=str(ca_cert)) if ca_cert is not None else None
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(
                f"{scheme}://{address}/health", timeout=2, context=context
            ) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError):
            pass
        if not superlink.alive():
            raise DeploymentError(
                f"the SuperLink exited with code {superlink.popen.returncode}; "
                f"its log ({superlink.log_path}) ends:\n{tail(superlink.log())}"
            )
        if time.monotonic() > deadline:
            raise DeploymentError(
                f"the SuperLink did not answer within {timeout} s; "
                f"its log ({superlink.log_path}) ends:\n{tail(superlink.log())}"
            )
        time.sleep(0.1)


def write_cli_config(
    flwr_home: Path, connection: str, address: str, *, root_certificates: Path | None = None
) -> Path:
    """Point the ``flwr`` CLI at a SuperLink: ``$FLWR_HOME/config.toml``, one connection."""
    link: dict[str, Any] = {"address": address}
    if root_certificates is not None:
        link["root-certificates"] = str(root_certificates)
    else:
        link["insecure"] = True
    make_private_dir(flwr_home)
    path = flwr_home / "config.toml"
    config = {"superlink": {"default": connection, connection: link}}
    write_file(path, tomli_w.dumps(config).encode("utf-8"))
    return path


def config_arg(values: Mapping[str, Any]) -> str:
    """A ``--node-config`` / ``--federation-config`` value: ``key=value`` pairs, TOML values."""
    # Flower splits the pairs on spaces and the first '=' (flwr.common.config).
    return " ".join(
        tomli_w.dumps({key: value}).strip().replace(" = ", "=", 1) for key, value in values.items()
    )


def stream_output(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    on_line: Callable[[str], None],
    cwd: Path | None = None,
    timeout: float | None = None,
) -> int | None:
    """Run ``args`` in its own process group; pass each line of its output to ``on_line``.

    Returns the exit code, or ``None`` when the command was killed at ``timeout`` seconds.
    However this ends (Ctrl-C included), no process of the group is left behind.
    """
    process = subprocess.Popen(
        list(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
        umask=PRIVATE_UMASK,
    )
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        signal_group(process, signal.SIGKILL)  # ends the output, so the loop below

    timer = threading.Timer(timeout, expire) if timeout is not None else None
    try:
        if timer is not None:
            timer.start()
        assert process.stdout is not None
        for line in process.stdout:
            on_line(line)
        code = process.wait()
    finally:
        if timer is not None:
            timer.cancel()
        # A CLI client holds no state worth a graceful exit: never leave it running.
        signal_group(process, signal.SIGKILL)
        process.wait()
    return None if expired.is_set() else code
