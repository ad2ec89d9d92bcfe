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

Start it next to the Flower process, on the same machine::

    flower-supernode --isolation process --port 9094 ...
    python -m server.deployment.warm_executor --insecure \\
        --runtime-api-address 127.0.0.1:9094

(``flower-superlink --isolation process`` likewise, with its ``--port``.) Nothing of the
app (``client``, ``server``, ``fedmodel``) is imported before the fork: the child loads
those from the submitted FAB, as the fresh process would.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from importlib.metadata import entry_points

# Flower's app runtimes and the libraries this project's apps import; none is the app.
# (torch.optim imports torch._dynamo on the first optimizer it builds: 1 s and more.)
# Imports only: a parent that has run torch ops with several OpenMP threads cannot fork
# safely (the children hang in their first parallel region).
PRELOAD_COMMANDS = ("flwr-clientapp", "flwr-serverapp")
PRELOAD_MODULES = ("numpy", "torch", "torch._dynamo", "torch.optim", "opacus", "sklearn.datasets")


class ForkExecutor:
    """Flower ``Executor`` that forks a pre-warmed child per task."""

    def __init__(self) -> None:
        self._children: set[int] = set()

    def get_eligible_capacity(self, supported_task_types, **kwargs):  # noqa: ANN001, ANN201
        return supported_task_types, set()  # as SubprocessExecutor: no capacity gate

    def wait_for_capacity(self, task_type=None, **kwargs) -> None:  # noqa: ANN001
        return None

    def launch(self, spec):  # noqa: ANN001, ANN201 - flwr's ExecutionSpec -> LaunchResult
        from flwr.supercore.superexec.executor.types import LaunchResult

        args = task_command(spec)
        pid = os.fork()
        if pid == 0:  # the child: become the task's process and never return
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


def main() -> None:
    """``flower-superexec`` with the forking executor."""
    for command in PRELOAD_COMMANDS:
        _entry_point(command)
    for name in PRELOAD_MODULES:
        importlib.import_module(name)

    from flwr.supercore.constant import ExecutorType

    loop = importlib.import_module("flwr.supercore.superexec.run_superexec")
    flower_get_executor = loop.get_executor

    def get_executor(executor_type, *args, **kwargs):  # noqa: ANN001, ANN202
        if executor_type == ExecutorType.SUBPROCESS:
            return ForkExecutor()
        return flower_get_executor(executor_type, *args, **kwargs)

    # The one seam flower-superexec has for choosing how tasks are started.
    loop.get_executor = get_executor

    flower_superexec = _entry_point("flower-superexec")
    sys.argv[0] = "flower-superexec"
    flower_superexec()


if __name__ == "__main__":
    main()
