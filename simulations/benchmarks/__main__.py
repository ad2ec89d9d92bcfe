"""Smoke-run every benchmark: ``python -m simulations.benchmarks --smoke`` (what CI calls).

Every module of this package is a benchmark, except the helpers named in :data:`HELPERS`
(each with the reason it is one). A benchmark defines ``main(argv)`` and a ``--smoke``
mode: a tiny workload of a few seconds that exits 0 when the benchmarked code works and
non-zero when it is broken, or prints ``skipped: <reason>`` and exits 0 when an optional
input (pfl-research's environment, a dataset file) is genuinely absent. A new module is
therefore run here as soon as it exists, and fails here if it has no smoke mode.

Each benchmark runs as ``python -m simulations.benchmarks.<name> --smoke`` in a fresh
process in its own session, with a timeout; its process group is killed when it ends (a
benchmark that leaves processes running in it fails; a process that starts a session of
its own, as Flower's SuperLink does, is its starter's to stop). Two run at a time by default
(``--jobs``): much of a smoke run is waiting (Ray's and a SuperLink's start-up, Flower's
polls), which the other one fills. One line per benchmark, as each ends, gives its time
and status; the exit code is 1 if any failed or timed out.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parents[1]
PACKAGE = "simulations.benchmarks"

# Modules that are not benchmarks, and why. Everything else in the package is one.
HELPERS: dict[str, str] = {
    "machine": "shared helpers (header, table, data folder, the skipped line); no main",
    "pfl_workload": (
        "pfl_compare's job in pfl-research's own environment (it cannot import flwr); "
        "pfl_compare --smoke runs it when that environment is given"
    ),
}
# Started first so that the short ones fill in beside them (seconds on the 2-core machine,
# quiet / loaded: engines 55 / 80 with Ray's start-up, deployment_round_time 26 / 40,
# scale 17 / 35, the others 4-13).
SLOWEST_FIRST = ("engines", "deployment_round_time", "scale")
# Only there to end a hang: a loaded machine slows every run two- or threefold.
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_JOBS = 2
TAIL_LINES = 25  # of a failed benchmark's output, shown under its line

# Process groups still running, so that an interrupted runner can end them all.
_running: set[int] = set()
_running_lock = threading.Lock()


@dataclass(frozen=True)
class SmokeResult:
    name: str
    status: str  # "ok", "skipped", "FAILED" or "TIMEOUT"
    seconds: float
    detail: str = ""  # the skip reason, or why it failed
    output: str = ""

    @property
    def passed(self) -> bool:
        return self.status in ("ok", "skipped")


def benchmark_modules(package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Names of the benchmark modules: every ``*.py`` here but ``_*`` files and HELPERS."""
    names = sorted(p.stem for p in package_dir.glob("*.py") if not p.stem.startswith("_"))
    return [name for name in names if name not in HELPERS]


def run_smoke(name: str, *, timeout: float) -> SmokeResult:
    """Run one benchmark's smoke mode in a fresh process; classify how it ended."""
    return run_command(name, [sys.executable, "-m", f"{PACKAGE}.{name}", "--smoke"], timeout)


def run_command(name: str, command: Sequence[str], timeout: float) -> SmokeResult:
    """Run ``command`` in its own session; kill its whole process group when it ends.

    The output goes to a file rather than a pipe, so a leftover grandchild holding the
    pipe open cannot make a finished benchmark look hung.
    """
    env = {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as log:
        process = subprocess.Popen(
            list(command),
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed as a whole below
        )
        with _running_lock:
            _running.add(process.pid)
        timed_out = False
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # Whatever the benchmark started and left behind goes with it.
            leftovers = _end_group(process)
            with _running_lock:
                _running.discard(process.pid)
        seconds = time.perf_counter() - started
        log.seek(0)
        output = log.read()
    if timed_out:
        return SmokeResult(name, "TIMEOUT", seconds, f"over {timeout:.0f} s", output)
    if process.returncode != 0:
        return SmokeResult(name, "FAILED", seconds, f"exit {process.returncode}", output)
    if leftovers:
        return SmokeResult(name, "FAILED", seconds, "left processes running", output)
    lines = output.strip().splitlines()
    if lines and lines[-1].startswith("skipped:"):
        return SmokeResult(name, "skipped", seconds, lines[-1][len("skipped:") :].strip(), output)
    return SmokeResult(name, "ok", seconds, "", output)


def _end_group(process: subprocess.Popen, grace: float = 2.0) -> bool:
    """Kill ``process``'s group; True if members other than a finished ``process`` remained.

    Members still exiting get ``grace`` seconds first.
    """
    if process.poll() is None:
        _kill_group(process.pid)
        process.wait()
        return False
    deadline = time.monotonic() + grace
    while _group_alive(process.pid):
        if time.monotonic() > deadline:
            _kill_group(process.pid)
            return True
        time.sleep(0.05)
    return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_running() -> None:
    with _running_lock:
        groups = list(_running)
    for pgid in groups:
        _kill_group(pgid)


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # main's finally then kills every running group


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {PACKAGE}", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--smoke", action="store_true", help="run every benchmark's --smoke")
    parser.add_argument("--list", action="store_true", help="list benchmarks and helpers")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="these benchmarks only")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds per benchmark (default {DEFAULT_TIMEOUT_S:.0f})",
    )
    parser.add_argument(
        "--jobs", type=int, default=DEFAULT_JOBS, help=f"run at once (default {DEFAULT_JOBS})"
    )
    args = parser.parse_args(argv)
    names = benchmark_modules()
    if args.list:
        for name in names:
            print(f"{name}: benchmark")
        for name, why in HELPERS.items():
            print(f"{name}: helper ({why})")
        return 0
    if not args.smoke:
        parser.error(
            "only --smoke runs from here; run a full benchmark alone: "
            f"python -m {PACKAGE}.NAME (NAME one of {', '.join(names)})"
        )
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"no benchmark named {', '.join(unknown)} (one of {', '.join(names)})")
        names = [name for name in names if name in args.only]
    names.sort(key=lambda n: SLOWEST_FIRST.index(n) if n in SLOWEST_FIRST else len(SLOWEST_FIRST))
    signal.signal(signal.SIGTERM, _on_sigterm)
    width = max(len(name) for name in names)
    started = time.perf_counter()
    results = []
    executor = ThreadPoolExecutor(max_workers=max(1, args.jobs))
    try:
        futures = [executor.submit(run_smoke, name, timeout=args.timeout) for name in names]
        for future in as_completed(futures):
            result = future.result()
            results.append(result)
            detail = f" ({result.detail})" if result.detail else ""
            print(f"{result.name:<{width}}  {result.seconds:6.1f} s  {result.status}{detail}")
            if not result.passed:
                for line in result.output.rstrip().splitlines()[-TAIL_LINES:]:
                    print(f"    | {line}")
            sys.stdout.flush()
    finally:
        _kill_running()  # only non-empty when interrupted
        executor.shutdown(wait=True, cancel_futures=True)
    failed = sorted(r.name for r in results if not r.passed)
    total = time.perf_counter() - started
    summary = f"failed: {', '.join(failed)}" if failed else "all passed"
    print(f"{len(results)} benchmarks in {total:.1f} s; {summary}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
