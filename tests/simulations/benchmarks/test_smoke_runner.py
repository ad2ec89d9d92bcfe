"""The smoke runner (``python -m simulations.benchmarks --smoke``) covers every benchmark.

Cheap checks only (no benchmark is run here): every module of the benchmarks package is
either run by the runner or a helper named with its reason, and every benchmark has the
``main(argv)`` and ``--smoke`` the runner relies on; a benchmark added without a smoke
mode fails here. How the runner classifies a run is checked on tiny commands.
"""

from __future__ import annotations

import ast
import sys
import time
from pathlib import Path

import pytest

from simulations.benchmarks.__main__ import HELPERS, benchmark_modules, run_command

PACKAGE_DIR = Path(__file__).resolve().parents[3] / "simulations" / "benchmarks"


def _all_modules() -> list[str]:
    names = (p.stem for p in PACKAGE_DIR.glob("*.py"))
    return sorted(n for n in names if n not in ("__init__", "__main__"))


def test_every_module_is_run_by_the_runner_or_a_documented_helper():
    run = set(benchmark_modules())
    for name in _all_modules():
        assert name in run or HELPERS.get(name, "").strip(), (
            f"simulations/benchmarks/{name}.py is neither run by the smoke runner nor a "
            "documented helper (HELPERS in simulations/benchmarks/__main__.py)"
        )
    assert not run & set(HELPERS)
    assert set(HELPERS) <= set(_all_modules()), "HELPERS names a module that is gone"
    assert {"overhead", "dp_cost", "engines", "scale", "pfl_compare"} <= run


@pytest.mark.parametrize("name", benchmark_modules())
def test_every_benchmark_has_main_argv_and_a_smoke_mode(name):
    tree = ast.parse((PACKAGE_DIR / f"{name}.py").read_text(encoding="utf-8"))
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    assert mains, f"{name}.py defines no main(argv)"
    assert [a.arg for a in mains[0].args.args][:1] == ["argv"], f"{name}.main takes no argv"
    constants = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
    assert "--smoke" in constants, f"{name}.py has no --smoke option"
    assert "__main__" in constants, f"{name}.py cannot be run with python -m"


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_runner_classifies_ok_skipped_failed_and_timeout():
    assert run_command("a", _python("print('done')"), timeout=60).status == "ok"
    skipped = run_command("b", _python("print('skipped: no such thing')"), timeout=60)
    assert (skipped.status, skipped.detail, skipped.passed) == ("skipped", "no such thing", True)
    failed = run_command("c", _python("print('skipped: x'); raise SystemExit(3)"), timeout=60)
    assert (failed.status, failed.detail, failed.passed) == ("FAILED", "exit 3", False)
    hung = run_command("d", _python("import time; time.sleep(60)"), timeout=0.5)
    assert (hung.status, hung.passed) == ("TIMEOUT", False)
    assert hung.seconds < 30


def test_runner_fails_a_benchmark_that_leaves_processes_running_and_ends_them():
    code = (
        "import subprocess, sys; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print(child.pid)"
    )
    result = run_command("e", _python(code), timeout=60)
    assert (result.status, result.detail) == ("FAILED", "left processes running")
    stat = Path(f"/proc/{int(result.output.split()[0])}/stat")
    deadline = time.monotonic() + 10  # SIGKILL was sent; its delivery takes a moment
    while stat.exists() and _state(stat) != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)
    # Killed: gone, or a zombie waiting for whoever adopted it to reap it.
    assert not stat.exists() or _state(stat) == "Z"


def _state(stat: Path) -> str:
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"
