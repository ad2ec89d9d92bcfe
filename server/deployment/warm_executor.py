"""A warm ``flower-superexec`` for SuperLinks and SuperNodes started with ``--isolation process``.

Flower 1.42 runs each message's ClientApp in a fresh ``flwr-clientapp`` process (and each
run's ServerApp in a fresh ``flwr-serverapp``), which pays the Python, torch and Opacus
imports -- 2 to 4 s on a small CPU -- every time. Flower offers warm executors only on
Kubernetes and not for these apps, so this module adds one: it is ``flower-superexec``
itself (same flags, same task loop, same Runtime API client), except that the executor
that starts a task, instead of spawning the task's command, ``fork``s a child of this
already-warm process, and the child runs that very command's entry point with the very
arguments Flower's ``SubprocessExecutor`` would pass. Message handling, FAB
installation and Context state stay Flower's.

Start it next to the Flower process, on the same machine, with the PID of that process
and the same SuperExec secret::

    flower-supernode --isolation process --port 9094 \
        --superexec-auth-secret-file superexec.secret ... &
    python -m server.deployment.warm_executor --insecure \
        --runtime-api-address 127.0.0.1:9094 --parent-pid $! \
        --superexec-auth-secret-file superexec.secret [--require-installed-app]

(``flower-superlink --isolation process`` likewise, with its ``--port``.)

What runs in a child is the submitted app, as in the fresh process Flower would start:

- nothing of the app (``client``, ``server``, ``fedmodel``, ``simulations``) is imported
  before the fork but this launcher's own package, and each child drops every module of
  those packages from ``sys.modules`` before it runs the task, so Flower's ``load_app``
  imports them from the FAB it installed;
- the working directory that ``python -m`` puts first on ``sys.path`` is removed (an
  attacker's ``client/`` in the folder the launcher was started from must not shadow the
  app); ``PYTHONPATH`` entries stay, as they are the operator's;
- with ``--require-installed-app`` a child refuses a FAB whose files are not the
  installed distribution's (:mod:`server.deployment.app_pin`), before importing any of it.

It exits within a few seconds when the process it serves is gone: when ``--parent-pid``
no longer runs (Flower's own check, plus one that counts a zombie as dead) or when the
Runtime API at ``--runtime-api-address`` stops accepting connections (after having
accepted them; 60 s to come up at first), so it cannot take tasks from whatever binds that
port next. Its children go with it. Refused by that Runtime API (no or another SuperExec
secret than its process's), it exits with ``os.EX_CONFIG`` (78) and says so on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

# Imported here, before any fork: a child that imported it after dropping the app's
# modules would bring the installed `server` package back ahead of the FAB's.
from server.deployment.app_pin import AppMismatch, check_app

# Flower's app runtimes and the libraries this project's apps import; none is the app.
# (torch.optim imports torch._dynamo on the first optimizer it builds: 1 s and more.)
# Imports only: a parent that has run torch ops with several OpenMP threads cannot fork
# safely (the children hang in their first parallel region).
PRELOAD_COMMANDS = ("flwr-clientapp", "flwr-serverapp")
PRELOAD_MODULES = ("numpy", "torch", "torch._dynamo", "torch.optim", "opacus", "sklearn.datasets")
# The app's top-level packages: a child must import them from the FAB, never reuse these.
APP_PACKAGES = ("client", "server", "fedmodel", "simulations")
# How soon a launcher notices that the process it serves is gone.
WATCH_INTERVAL_S, GONE_AFTER_S, STARTUP_S = 0.5, 2.0, 60.0


class ForkExecutor:
    """Flower ``Executor`` that forks a pre-warmed child per task."""

    def __init__(self, *, require_installed_app: bool = False) -> None:
        self._children: set[int] = set()
        self.require_installed_app = require_installed_app

    def get_eligible_capacity(self, supported_task_types, **kwargs):  # noqa: ANN001, ANN201
        return supported_task_types, set()  # as SubprocessExecutor: no capacity gate

    def wait_for_capacity(self, task_type=None, **kwargs) -> None:  # noqa: ANN001
        return None

    def launch(self, spec):  # noqa: ANN001, ANN201 - flwr's ExecutionSpec -> LaunchResult
        from flwr.supercore.superexec.executor.types import LaunchResult

        args = task_command(spec)
        pid = os.fork()
        if pid == 0:  # the child: become the task's process and never return
            _forget_app_modules()
            if self.require_installed_app:
                _pin_installed_app()
            os._exit(_run_command(args, quiet=spec.suppress_output))
        self._children.add(pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap finished children (they report their outcome to Flower themselves)."""
        for pid in list(self._children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self._children.discard(pid)

    def close(self) -> None:
        return None

    def stop_children(self) -> None:
        """SIGTERM every running child (their Runtime API is gone with their parent's)."""
        for pid in list(self._children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                self._children.discard(pid)


def task_command(spec) -> list[str]:  # noqa: ANN001
    """The command line Flower's ``SubprocessExecutor.launch`` runs for ``spec``."""
    from flwr.supercore.constant import TASK_TYPE_TO_APPIO_API_ADDRESS_ARG, TASK_TYPE_TO_COMMAND

    args = [
        TASK_TYPE_TO_COMMAND[spec.task_type],
        TASK_TYPE_TO_APPIO_API_ADDRESS_ARG[spec.task_type],
        spec.runtime_api_address,
        "--token",
        spec.token,
    ]
    if spec.insecure:
        args.append("--insecure")
    elif spec.root_certificates_path is not None:
        args += ["--root-certificates", spec.root_certificates_path]
    if spec.parent_pid is not None:
        args += ["--parent-pid", str(spec.parent_pid)]
    if spec.runtime_dependency_install:
        args.append("--allow-runtime-dependency-installation")
    return args


def _entry_point(command: str):  # noqa: ANN202
    (script,) = entry_points(group="console_scripts", name=command)
    return script.load()


def _run_command(args: list[str], *, quiet: bool) -> int:
    try:
        if quiet:  # as SubprocessExecutor: output to /dev/null
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
        sys.argv = list(args)
        _entry_point(args[0])()
    except SystemExit as done:  # the apps end with flwr_exit -> sys.exit
        return done.code if isinstance(done.code, int) else 1
    except BaseException:  # noqa: BLE001 - report, then leave the child
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


def _forget_app_modules() -> None:
    """Drop the app's packages from ``sys.modules``: the child imports them from the FAB."""
    for name in list(sys.modules):
        if name.partition(".")[0] in APP_PACKAGES:
            del sys.modules[name]


def _pin_installed_app() -> None:
    """Make Flower's ``load_app`` refuse a FAB that is not the installed app (before import)."""
    from flwr.clientapp import utils as clientapp_loading
    from flwr.server import run_serverapp as serverapp_loading

    for module in (clientapp_loading, serverapp_loading):
        flower_load_app = module.load_app

        def load_checked(ref, error_type, project_dir=None, _load=flower_load_app):  # noqa: ANN001, ANN202
            try:
                check_app(project_dir if project_dir is not None else Path.cwd())
            except AppMismatch as refusal:  # Flower reports it as the app's load error
                raise error_type(str(refusal)) from None
            return _load(ref, error_type, project_dir)

        module.load_app = load_checked


def _drop_working_directory_from_path() -> None:
    """``python -m`` puts the working directory first on ``sys.path``: not the app's place."""
    if sys.flags.safe_path or not sys.path:
        return
    cwd = os.getcwd()
    from_env = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if sys.path[0] in ("", cwd) and sys.path[0] not in from_env and cwd not in from_env:
        del sys.path[0]


def _process_runs(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (dead, not yet reaped) does not."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # "pid (comm) state ...": comm may hold spaces and parentheses.
            return stat.read().rpartition(b")")[2].split()[0] != b"Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (not Linux): ask the kernel, zombies count as running
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _accepts_connections(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=1):
            return True
    except (OSError, ValueError):
        return False


def watch_served_process(
    *, parent_pid: int | None, runtime_api_address: str, on_gone: Callable[[str], None]
) -> threading.Thread:
    """Call ``on_gone(reason)`` once the process this launcher serves is gone (thread)."""

    def watch() -> None:
        started = time.monotonic()
        seen_up = False
        down_since: float | None = None
        while True:
            time.sleep(WATCH_INTERVAL_S)
            now = time.monotonic()
            if parent_pid is not None and not _process_runs(parent_pid):
                return on_gone(f"its parent process {parent_pid} is gone")
            if _accepts_connections(runtime_api_address):
                seen_up, down_since = True, None
                continue
            down_since = now if down_since is None else down_since
            if seen_up and now - down_since >= GONE_AFTER_S:
                return on_gone(f"the Runtime API at {runtime_api_address} is gone")
            if not seen_up and now - started >= STARTUP_S:
                return on_gone(f"the Runtime API at {runtime_api_address} never came up")

    thread = threading.Thread(target=watch, name="served-process-watch", daemon=True)
    thread.start()
    return thread


def _launcher_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """This launcher's own flag, and what it needs to know of ``flower-superexec``'s."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--require-installed-app", action="store_true")
    parser.add_argument("--parent-pid", type=int)
    parser.add_argument("--runtime-api-address", "--appio-api-address")
    ours, _ = parser.parse_known_args(argv)
    rest = [arg for arg in argv if arg != "--require-installed-app"]
    return ours, rest


def main() -> None:
    """``flower-superexec`` with the forking executor."""
    _drop_working_directory_from_path()
    ours, flower_args = _launcher_args(sys.argv[1:])
    for command in PRELOAD_COMMANDS:
        _entry_point(command)
    for name in PRELOAD_MODULES:
        importlib.import_module(name)

    from flwr.supercore.constant import ExecutorType

    loop = importlib.import_module("flwr.supercore.superexec.run_superexec")
    flower_get_executor = loop.get_executor
    executor = ForkExecutor(require_installed_app=ours.require_installed_app)

    def get_executor(executor_type, *args, **kwargs):  # noqa: ANN001, ANN202
        if executor_type == ExecutorType.SUBPROCESS:
            return executor
        return flower_get_executor(executor_type, *args, **kwargs)

    # The one seam flower-superexec has for choosing how tasks are started.
    loop.get_executor = get_executor

    def on_gone(reason: str) -> None:
        print(f"warm launcher: exiting, {reason}", file=sys.stderr, flush=True)
        executor.stop_children()
        os._exit(0)  # the main loop may be inside Flower's retrying client: do not wait

    # Flower's SuperExec meets a refused SuperExec secret (HTTP 401 on AcquireTask) by
    # SIGINT-ing itself: it exits 0 with "SuperExec terminated gracefully" and no reason,
    # which a supervisor takes for a clean stop. Say why, and exit as a config error.
    flower_retry_invoker = loop.make_simple_http_retry_invoker

    def retry_invoker():  # noqa: ANN202
        invoker = flower_retry_invoker()
        flower_should_giveup = invoker.should_giveup

        def should_giveup(exc: Exception) -> bool:
            if getattr(getattr(exc, "response", None), "status_code", None) == 401:
                print(
                    f"warm launcher: exiting, the Runtime API at {ours.runtime_api_address} "
                    "refused its SuperExec authentication (HTTP 401): "
                    "--superexec-auth-secret-file must name the file its SuperNode or "
                    "SuperLink was started with",
                    file=sys.stderr,
                    flush=True,
                )
                executor.stop_children()
                os._exit(os.EX_CONFIG)
            return flower_should_giveup(exc)

        invoker.should_giveup = should_giveup
        return invoker

    loop.make_simple_http_retry_invoker = retry_invoker

    if ours.runtime_api_address:  # else flower-superexec refuses the arguments below
        watch_served_process(
            parent_pid=ours.parent_pid,
            runtime_api_address=ours.runtime_api_address,
            on_gone=on_gone,
        )
    flower_superexec = _entry_point("flower-superexec")
    sys.argv = ["flower-superexec", *flower_args]
    flower_superexec()


if __name__ == "__main__":
    main()
