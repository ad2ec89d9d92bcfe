"""A whole federation on this machine: one SuperLink and N SuperNodes on loopback ports.

Every process is Flower's own runtime (``flower-superlink``, ``flower-supernode``, ``flwr
run``), started exactly as the README's "Deploy" section starts them by hand; this module
only picks free ports, points the ``flwr`` CLI at the SuperLink from a private
``FLWR_HOME``, waits for the SuperNodes to connect, and stops every process it started (by
process group, so Flower's own children go too) when the federation ends, fails or is
interrupted. It serves ``fedmodel deploy-local`` (:mod:`server.deployment.deploy_local`),
the deployment tests and benchmarks.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from server.deployment.certificates import CertificatePaths, make_certificates
from server.deployment.flower_processes import (
    LOOPBACK,
    DeploymentError,
    ManagedProcess,
    config_arg,
    flower_env,
    flower_executable,
    free_port,
    wait_for_health,
)
from server.deployment.flwr_cli import FlwrCli, RunOutcome, stage_app
from server.deployment.node_keys import make_node_keys
from server.deployment.private_files import make_private_dir, write_file

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Flower's per-message ClientApp launcher (flower-superexec) polls its SuperNode for
# work every second by default; on loopback a tenth of that costs nothing.
SUPEREXEC_POLL_INTERVAL_S = "0.1"
# Every process of the federation, the flwr CLI included: prompt logs, prompt polls.
LOCAL_ENV = {
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": SUPEREXEC_POLL_INTERVAL_S,
    "PYTHONUNBUFFERED": "1",
}


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
        process per message and ``flwr-serverapp`` per run. Each launcher and its
        process share a fresh SuperExec secret (``--superexec-auth-secret-file``), so
        nothing else on the machine can take their tasks.
    require_installed_app : bool or collection of int
        With ``warm``: launchers refuse a submitted app whose files are not the
        installed distribution's (``--require-installed-app``, see
        :mod:`server.deployment.app_pin`): every launcher (``True``), or those of the
        given node indices (``-1``: the SuperLink's).
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
        require_installed_app: bool | Collection[int] = False,
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
        self.require_installed_app = require_installed_app
        self._pinned = (
            {-1, *range(num_nodes)}
            if require_installed_app is True
            else set(require_installed_app or ())
        )
        self.node_threads = node_threads or max(1, (os.cpu_count() or 1) // num_nodes)
        self.startup_timeout = startup_timeout
        self._extra_node_configs = [dict(c) for c in node_configs] if node_configs else None
        self.superlink: ManagedProcess | None = None
        self.nodes: dict[int, ManagedProcess] = {}
        self.executors: dict[int, ManagedProcess] = {}
        self.port: int | None = None
        self._cli: FlwrCli | None = None
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
        make_private_dir(self.work_dir)
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
            secret = self._superexec_secret(self.work_dir / "superlink")
            args += ["--isolation", "process", "--superexec-auth-secret-file", str(secret)]
        env = flower_env(self.work_dir / "superlink" / "flwr-home", LOCAL_ENV)
        log_path = self.work_dir / "logs" / "superlink.log"
        self.superlink = ManagedProcess("SuperLink", args, log_path=log_path, env=env)
        ca_cert = self.certificates.ca_cert if self.tls else None
        if self.warm:  # the ServerApp of each run: the SuperLink's Runtime API, same port
            tls = ["--root-certificates", str(ca_cert)] if ca_cert else []
            self.executors[-1] = self._start_executor(
                -1, "ServerApp executor", self.address, tls, self.superlink, env, log_path
            )
        self._cli = FlwrCli(
            self.work_dir / "flwr-cli", self.address, root_certificates=ca_cert, env=LOCAL_ENV
        )
        wait_for_health(self.superlink, self.address, timeout=self.startup_timeout, ca_cert=ca_cert)

    def _start_executor(
        self,
        index: int,
        name: str,
        runtime_address: str,
        tls_args: list[str],
        parent: ManagedProcess,
        env: Mapping[str, str],
        log_path: Path,
    ) -> ManagedProcess:
        """The warm task launcher (``server.deployment.warm_executor``) of ``parent``."""
        secret = parent.args[parent.args.index("--superexec-auth-secret-file") + 1]
        pin = ["--require-installed-app"] if index in self._pinned else []
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
                "--superexec-auth-secret-file",
                secret,
                *pin,
            ],
            log_path=log_path,
            env=env,
        )

    @staticmethod
    def _superexec_secret(folder: Path) -> Path:
        """A fresh SuperExec shared secret in ``folder`` (0600): one per launcher pair."""
        make_private_dir(folder)
        path = folder / "superexec.secret"
        write_file(path, secrets.token_hex(32).encode("ascii"))
        return path

    # -- SuperNodes -------------------------------------------------------------------

    def node_dir(self, index: int) -> Path:
        return self.work_dir / f"node-{index}"

    def node_state_dir(self, index: int) -> Path:
        """Node ``index``'s ``state-dir`` (its privacy ledger), kept across federations."""
        return self.node_dir(index) / "state"

    def node_config(self, index: int) -> dict[str, Any]:
        """Node ``index``'s ``--node-config``: its partition and its state directory."""
        config: dict[str, Any] = {
            "partition-id": index,
            "num-partitions": self.num_nodes,
            "state-dir": str(self.node_state_dir(index)),
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
        self.cli.register(Path(f"{key}.pub"), f"node-{index}")
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
            config_arg(self.node_config(index)),
        ]
        if self.warm:
            secret = self._superexec_secret(self.node_dir(index))
            args += ["--isolation", "process", "--superexec-auth-secret-file", str(secret)]
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
        make_private_dir(self.node_dir(index))
        threads = {"OMP_NUM_THREADS": str(self.node_threads)}
        env = flower_env(self.node_dir(index) / "flwr-home", {**LOCAL_ENV, **threads})
        log_path = self.work_dir / "logs" / f"node-{index}{suffix}.log"
        self.nodes[index] = node = ManagedProcess(
            f"SuperNode {index}", args, log_path=log_path, env=env, cwd=self.node_dir(index)
        )
        if self.warm:  # the node's Runtime API is plain HTTP on loopback
            self.executors[index] = self._start_executor(
                index,
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

    # -- runs -------------------------------------------------------------------------

    @property
    def cli(self) -> FlwrCli:
        """The ``flwr`` CLI, pointed at this federation's SuperLink."""
        if self._cli is None:
            raise DeploymentError("the SuperLink is not started")
        return self._cli

    def submit(
        self,
        run_config: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> RunOutcome:
        """Submit a run of the app in ``app_dir``; see :meth:`FlwrCli.submit`."""
        app = stage_app(self.app_dir, self.work_dir / "app")
        return self.cli.submit(app, run_config, timeout=timeout, on_line=on_line)
