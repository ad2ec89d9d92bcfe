"""A whole federation on this machine: one SuperLink and N SuperNodes on loopback ports.

Every process is Flower's own runtime (``flower-superlink``, ``flower-supernode``, ``flwr
run``), started exactly as the README's "Deploy" section starts them by hand; this module
only picks free ports, writes the ``flwr`` CLI's connection into a private ``FLWR_HOME``,
waits for the SuperNodes to connect, and stops every process it started (by process
group, so Flower's own children go too) when the federation ends, fails or is
interrupted. It serves ``fedmodel deploy-local``, the deployment tests and benchmarks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.deployment.certificates import CertificatePaths, make_certificates
from server.deployment.node_keys import make_node_keys

if TYPE_CHECKING:
    from fedmodel.results import RoundMetrics

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONNECTION = "fedmodel-local"
LOOPBACK = "127.0.0.1"
# Flower's per-message ClientApp launcher (flower-superexec) polls its SuperNode for
# work every second by default; on loopback a tenth of that costs nothing.
SUPEREXEC_POLL_INTERVAL_S = "0.1"


class DeploymentError(RuntimeError):
    """A process of the local federation failed to start, or a run did not finish."""


def flower_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every Flower process: private home, no telemetry, our venv first."""
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_SUPEREXEC_TASK_POLL_INTERVAL=SUPEREXEC_POLL_INTERVAL_S,
        PYTHONUNBUFFERED="1",
    )
    # Flower starts its helpers (flower-superexec, flwr-clientapp, flwr-serverapp) by
    # name: they must come from the environment fedmodel is installed in.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(extra or {})
    return env


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def flower_executable(name: str) -> str:
    """Path of a Flower command installed next to this Python."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise DeploymentError(f"{name} not found next to {sys.executable}; is flwr installed?")
    return str(path)


class ManagedProcess:
    """A process started in its own process group, with its output in a log file."""

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
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def signal_group(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the process and every child it started (its process group)."""
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        """SIGKILL the whole group at once, as a crash would, and reap the process."""
        self.signal_group(signal.SIGKILL)
        self.popen.wait()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the group, then SIGKILL whatever is left after ``timeout`` seconds."""
        self.signal_group(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        # Children may outlive their parent's graceful exit: kill the group regardless.
        self.signal_group(signal.SIGKILL)
        self.popen.wait()

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
                    f"printing {pattern!r}; its log ({self.log_path}) ends:\n{_tail(self.log())}"
                )
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"{self.name} did not print {pattern!r} within {timeout:.0f} s; "
                    f"its log ({self.log_path}) ends:\n{_tail(self.log())}"
                )
            time.sleep(0.1)


@dataclass(frozen=True)
class RunOutcome:
    """What ``flwr run`` reported for one submitted run."""

    run_id: int
    status: str
    log: str

    @property
    def succeeded(self) -> bool:
        return self.status == "finished:completed"


class LocalFederation:
    """A SuperLink and ``num_nodes`` SuperNodes on loopback, driven by Flower's CLI.

    Parameters
    ----------
    work_dir : path
        Holds logs, the private ``FLWR_HOME`` of each process, certificates, node keys
        and each node's ``state-dir`` (so a second federation over the same
        ``work_dir`` finds every node's privacy ledger).
    num_nodes : int
        Number of SuperNodes; node ``i`` holds partition ``i`` of ``num_nodes``.
    node_configs : sequence of mapping, optional
        Extra node config per node (e.g. a custom ``data-path``), merged over the
        defaults ``partition-id``, ``num-partitions`` and ``state-dir``.
    tls : bool
        Serve the SuperLink over TLS with a fresh CA and server certificate.
    auth : bool
        Start the SuperLink with ``--enable-supernode-auth`` (implies ``tls``); each
        node gets a key pair and is registered with ``flwr supernode register``
        before it starts, unless started with ``register=False``.
    warm : bool
        Start the SuperLink and each SuperNode with ``--isolation process``, each next
        to the warm launcher of :mod:`server.deployment.warm_executor` (imports once,
        forks per task), instead of Flower's default of a fresh ``flwr-clientapp``
        process per message and ``flwr-serverapp`` per run.
    node_threads : int, optional
        Threads each node's torch may use (``OMP_NUM_THREADS``); by default the cores
        divided among the nodes: several nodes on one machine share its cores rather
        than each take them all (which, on 2 cores, made rounds several times slower).
    startup_timeout : float
        Seconds each process may take to come up.
    """

    def __init__(
        self,
        work_dir: str | os.PathLike[str],
        *,
        num_nodes: int,
        node_configs: Sequence[Mapping[str, Any]] | None = None,
        tls: bool = False,
        auth: bool = False,
        app_dir: str | os.PathLike[str] = PROJECT_ROOT,
        warm: bool = True,
        node_threads: int | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
        if node_configs is not None and len(node_configs) != num_nodes:
            raise ValueError(f"got {len(node_configs)} node configs for {num_nodes} nodes")
        self.work_dir = Path(work_dir).resolve()
        self.num_nodes = num_nodes
        self.tls = tls or auth
        self.auth = auth
        self.app_dir = Path(app_dir).resolve()
        self.warm = warm
        self.node_threads = node_threads or max(1, (os.cpu_count() or 1) // num_nodes)
        self.startup_timeout = startup_timeout
        self._extra_node_configs = [dict(c) for c in node_configs] if node_configs else None
        self.superlink: ManagedProcess | None = None
        self.nodes: dict[int, ManagedProcess] = {}
        self.executors: dict[int, ManagedProcess] = {}
        self.port: int | None = None
        self._cli_home = self.work_dir / "flwr-cli"
        self._registered: set[int] = set()
        self._node_starts: dict[int, int] = {}

    # -- lifecycle --------------------------------------------------------------------

    def __enter__(self) -> LocalFederation:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the SuperLink and every SuperNode; wait until all are connected."""
        try:
            self.start_superlink()
            for index in range(self.num_nodes):
                self.start_node(index, wait=False)
            for index in range(self.num_nodes):
                self.wait_for_node(index)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every process this federation started (nodes first, then the SuperLink)."""
        for executor in self.executors.values():
            executor.kill()  # stateless; its ClientApp children are in its group
        for process in [*self.nodes.values(), self.superlink]:
            if process is not None:
                process.stop()

    # -- the SuperLink ----------------------------------------------------------------

    @property
    def address(self) -> str:
        if self.port is None:
            raise DeploymentError("the SuperLink is not started")
        return f"{LOOPBACK}:{self.port}"

    @property
    def certificates(self) -> CertificatePaths:
        """Where ``tls`` keeps the CA and the SuperLink's certificate."""
        certs = self.work_dir / "certs"
        return CertificatePaths(
            ca_cert=certs / "ca.crt",
            ca_key=certs / "ca.key",
            server_cert=certs / "server.pem",
            server_key=certs / "server.key",
        )

    def start_superlink(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        args = [flower_executable("flower-superlink"), "--host", LOOPBACK, "--port", str(self.port)]
        # Apps run in this environment: never let the SuperLink `uv sync` their deps.
        args.append("--disable-runtime-dependency-installation")
        if self.tls:
            certs = make_certificates(
                self.work_dir / "certs", hosts=["localhost", LOOPBACK], overwrite=True
            )
            args += [
                "--ssl-ca-certfile",
                str(certs.ca_cert),
                "--ssl-certfile",
                str(certs.server_cert),
                "--ssl-keyfile",
                str(certs.server_key),
            ]
        else:
            args.append("--insecure")
        if self.auth:
            args.append("--enable-supernode-auth")
        if self.warm:
            args += ["--isolation", "process"]
        env = flower_env(self.work_dir / "superlink" / "flwr-home")
        log_path = self.work_dir / "logs" / "superlink.log"
        self.superlink = ManagedProcess("SuperLink", args, log_path=log_path, env=env)
        if self.warm:  # the ServerApp of each run: the SuperLink's Runtime API, same port
            tls = ["--root-certificates", str(self.certificates.ca_cert)] if self.tls else []
            self.executors[-1] = self._start_executor(
                "ServerApp executor", self.address, tls, self.superlink, env, log_path
            )
        self._write_cli_config()
        self._wait_for_health()

    def _start_executor(
        self,
        name: str,
        runtime_address: str,
        tls_args: list[str],
        parent: ManagedProcess,
        env: Mapping[str, str],
        log_path: Path,
    ) -> ManagedProcess:
        """The warm task launcher (``server.deployment.warm_executor``) of ``parent``."""
        return ManagedProcess(
            name,
            [
                sys.executable,
                "-m",
                "server.deployment.warm_executor",
                *(tls_args or ["--insecure"]),
                "--runtime-api-address",
                runtime_address,
                "--parent-pid",
                str(parent.pid),
            ],
            log_path=log_path,
            env=env,
        )

    def _write_cli_config(self) -> None:
        """Point the ``flwr`` CLI at this SuperLink: ``$FLWR_HOME/config.toml``."""
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]"]
        lines.append(f'address = "{self.address}"')
        if self.tls:
            lines.append(f"root-certificates = {json.dumps(str(self.certificates.ca_cert))}")
        else:
            lines.append("insecure = true")
        self._cli_home.mkdir(parents=True, exist_ok=True)
        (self._cli_home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _wait_for_health(self) -> None:
        assert self.superlink is not None
        scheme = "https" if self.tls else "http"
        context = (
            ssl.create_default_context(cafile=str(self.certificates.ca_cert)) if self.tls else None
        )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                with urllib.request.urlopen(
                    f"{scheme}://{self.address}/health", timeout=2, context=context
                ) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError):
                pass
            if not self.superlink.alive():
                raise DeploymentError(
                    f"the SuperLink exited with code {self.superlink.popen.returncode}; "
                    f"its log ends:\n{_tail(self.superlink.log())}"
                )
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"the SuperLink did not answer within {self.startup_timeout} s"
                )
            time.sleep(0.1)

    # -- SuperNodes -------------------------------------------------------------------

    def node_dir(self, index: int) -> Path:
        return self.work_dir / f"node-{index}"

    def node_config(self, index: int) -> dict[str, Any]:
        """Node ``index``'s ``--node-config``: its partition and its state directory."""
        config: dict[str, Any] = {
            "partition-id": index,
            "num-partitions": self.num_nodes,
            "state-dir": str(self.node_dir(index) / "state"),
        }
        if self._extra_node_configs:
            config.update(self._extra_node_configs[index])
        return config

    def node_key(self, index: int) -> Path:
        """Node ``index``'s private key (made on first use)."""
        key = self.work_dir / "keys" / f"node-{index}"
        if not key.exists():
            make_node_keys(key.parent, name=key.name)
        return key

    def register_node(self, index: int) -> None:
        """``flwr supernode register`` node ``index``'s public key with the SuperLink."""
        key = self.node_key(index)
        self.flwr("supernode", "register", f"{key}.pub", CONNECTION, "--name", f"node-{index}")
        self._registered.add(index)

    def start_node(self, index: int, *, register: bool = True, wait: bool = True) -> ManagedProcess:
        """Start (or restart) SuperNode ``index``; return its process."""
        if not 0 <= index < self.num_nodes:
            raise ValueError(f"node index {index} is out of range for {self.num_nodes} nodes")
        if index in self.nodes and self.nodes[index].alive():
            raise DeploymentError(f"node {index} is already running (pid {self.nodes[index].pid})")
        runtime_port = free_port()
        args = [
            flower_executable("flower-supernode"),
            "--superlink",
            self.address,
            "--port",
            str(runtime_port),
            "--node-config",
            format_node_config(self.node_config(index)),
        ]
        if self.warm:
            args += ["--isolation", "process"]
        if self.tls:
            args += ["--root-certificates", str(self.certificates.ca_cert)]
        else:
            args.append("--insecure")
        if self.auth:
            if register and index not in self._registered:
                self.register_node(index)
            args += ["--auth-supernode-private-key", str(self.node_key(index))]
        starts = self._node_starts.get(index, 0) + 1
        self._node_starts[index] = starts
        suffix = "" if starts == 1 else f"-restart{starts - 1}"
        self.node_dir(index).mkdir(parents=True, exist_ok=True)
        threads = {"OMP_NUM_THREADS": str(self.node_threads)}
        env = flower_env(self.node_dir(index) / "flwr-home", threads)
        log_path = self.work_dir / "logs" / f"node-{index}{suffix}.log"
        self.nodes[index] = node = ManagedProcess(
            f"SuperNode {index}", args, log_path=log_path, env=env, cwd=self.node_dir(index)
        )
        if self.warm:  # the node's Runtime API is plain HTTP on loopback
            self.executors[index] = self._start_executor(
                f"ClientApp executor {index}",
                f"{LOOPBACK}:{runtime_port}",
                [],
                node,
                env,
                log_path,
            )
        if wait:
            self.wait_for_node(index)
        return self.nodes[index]

    def wait_for_node(self, index: int) -> int:
        """Wait until node ``index`` is connected; return its Flower node id."""
        match = self.nodes[index].wait_for_log(r"SuperNode ID: (\d+)", timeout=self.startup_timeout)
        return int(match.group(1))

    def kill_node(self, index: int) -> None:
        """Crash node ``index``: SIGKILL the SuperNode and its ClientApp processes at once."""
        self.nodes[index].kill()
        if index in self.executors:
            self.executors[index].kill()

    # -- the flwr CLI -----------------------------------------------------------------

    def flwr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a ``flwr`` CLI command against this SuperLink; raise on failure."""
        result = subprocess.run(
            [flower_executable("flwr"), *args],
            capture_output=True,
            text=True,
            env=flower_env(self._cli_home),
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise DeploymentError(
                f"`flwr {' '.join(args)}` failed with code {result.returncode}:\n"
                f"{_tail(result.stdout + result.stderr)}"
            )
        return result

    def list_nodes(self) -> list[dict[str, Any]]:
        """The SuperLink's view of the nodes (``flwr supernode list --format json``)."""
        out = self.flwr("supernode", "list", CONNECTION, "--format", "json").stdout
        return list(json.loads(out[out.index("{") :])["nodes"])

    def submit(
        self,
        run_config: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> RunOutcome:
        """Submit a run with ``flwr run --stream``, stream its log, wait until it ends.

        Parameters
        ----------
        run_config : mapping, optional
            Run-config overrides (kebab-case keys, as in ``pyproject.toml``).
        timeout : float, optional
            Seconds to wait; past them the run is stopped (``flwr stop``) and this raises.
        on_line : callable, optional
            Called with every line of the run's log as it arrives.
        """
        with tempfile.NamedTemporaryFile(
            "w", suffix=".toml", dir=self.work_dir, delete=False, encoding="utf-8"
        ) as overrides:
            overrides.write(_to_toml(run_config or {}))
        args = [
            flower_executable("flwr"),
            "run",
            str(self.stage_app()),
            CONNECTION,
            "--stream",
            "--run-config",
            overrides.name,
        ]
        lines: list[str] = []
        run_id: int | None = None
        process = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=flower_env(self._cli_home),
            start_new_session=True,
        )
        timer = None
        timed_out = threading.Event()
        if timeout is not None:

            def _expire() -> None:
                timed_out.set()
                os.killpg(process.pid, signal.SIGKILL)

            timer = threading.Timer(timeout, _expire)
            timer.start()
        try:
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line)
                if run_id is None and (match := re.search(r"started run (\d+)", line)):
                    run_id = int(match.group(1))
                if on_line is not None:
                    on_line(line)
            process.wait()
        finally:
            if timer is not None:
                timer.cancel()
            if process.poll() is None:  # interrupted: do not leave `flwr run` behind
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            Path(overrides.name).unlink(missing_ok=True)
        log = "".join(lines)
        if run_id is None:
            raise DeploymentError(
                f"`flwr run` did not start a run (code {process.returncode}):\n{_tail(log)}"
            )
        if timed_out.is_set():
            self.flwr("stop", str(run_id), CONNECTION)
            raise DeploymentError(f"run {run_id} did not finish within {timeout} s")
        return RunOutcome(run_id=run_id, status=self.run_status(run_id), log=log)

    def stage_app(self) -> Path:
        """A copy of the app with only what its FAB holds, to submit with ``flwr run``.

        ``flwr run DIR`` walks all of DIR before filtering, ``.venv`` included (seconds
        for a torch install); the copy has ``pyproject.toml``, ``.gitignore`` and the
        top-level Python packages only.
        """
        staged = self.work_dir / "app"
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(parents=True)
        for name in ("pyproject.toml", ".gitignore"):
            if (self.app_dir / name).exists():
                shutil.copy2(self.app_dir / name, staged / name)
        for package in sorted(self.app_dir.iterdir()):
            if (package / "__init__.py").is_file() and not package.name.startswith("."):
                shutil.copytree(
                    package, staged / package.name, ignore=shutil.ignore_patterns("__pycache__")
                )
        return staged

    def run_status(self, run_id: int) -> str:
        """E.g. ``"finished:completed"`` or ``"finished:failed"`` (``flwr list``)."""
        out = self.flwr("list", "--run-id", str(run_id), CONNECTION, "--format", "json").stdout
        runs = json.loads(out[out.index("{") :])["runs"]
        return str(runs[0]["status"])


def format_node_config(config: Mapping[str, Any]) -> str:
    """A ``--node-config`` value: space-separated ``key=value`` with TOML values."""
    return " ".join(f"{key}={_toml_value(value)}" for key, value in config.items())


def _to_toml(values: Mapping[str, Any]) -> str:
    return "".join(f"{key} = {_toml_value(value)}\n" for key, value in values.items())


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string is a JSON string


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


@dataclass(frozen=True)
class DeploymentResult:
    """Where a deployed run wrote its folder, what each round measured, how it ended."""

    run_dir: Path
    rounds: list[RoundMetrics]
    run_id: int
    status: str
    work_dir: Path

    @property
    def final(self) -> RoundMetrics:
        return self.rounds[-1]


def deploy_local(
    run_config: Mapping[str, Any],
    *,
    num_clients: int,
    work_dir: str | os.PathLike[str],
    tls: bool = False,
    auth: bool = False,
    warm: bool = True,
    timeout: float | None = None,
    on_line: Callable[[str], None] | None = None,
) -> DeploymentResult:
    """Run one federated job on a local federation of ``num_clients`` SuperNodes.

    Starts the federation in ``work_dir``, submits the run with ``run_config`` (a
    ``run-dir`` is chosen under ``work_dir/runs`` unless given), streams its log to
    ``on_line`` and stops every process before returning, also on failure or Ctrl-C.
    """
    from fedmodel.config import RunConfig
    from fedmodel.results import default_run_dir, load_metrics

    config = RunConfig.from_mapping(run_config)  # fail before starting anything
    work = Path(work_dir).resolve()
    run_dir = Path(config.run_dir or default_run_dir(config, root=work / "runs")).resolve()
    overrides = {**run_config, "run-dir": str(run_dir)}
    # A deployed node reads data locations from its own node config only (the server's
    # run config cannot point it at files); here the user runs every node, so each gets
    # the run's data-dir as its own.
    node_data = {"data-dir": os.path.abspath(config.data_dir)} if config.data_dir else {}
    with LocalFederation(
        work,
        num_nodes=num_clients,
        tls=tls,
        auth=auth,
        warm=warm,
        node_configs=[dict(node_data) for _ in range(num_clients)],
    ) as federation:
        outcome = federation.submit(overrides, timeout=timeout, on_line=on_line)
    rounds = load_metrics(run_dir) if (run_dir / "metrics.json").exists() else []
    return DeploymentResult(
        run_dir=run_dir, rounds=rounds, run_id=outcome.run_id, status=outcome.status, work_dir=work
    )
