"""The README's "Use your own data" worked example, run command by command.

Each ``fedmodel ...`` line goes to ``simulations.cli.main`` (what the ``fedmodel``
console script calls) and each ``python -m ...`` line to its module, in this process
and in a scratch folder; the Python block is executed as written. A README line of any
other kind fails the test, so the section cannot drift from what is run.
"""

import contextlib
import io
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

from simulations.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
ACCURACY_FLOOR = 0.85  # the README reports about 0.92 for each


def _section() -> str:
    text = README.read_text()
    start = text.index("\n## Use your own data\n")
    return text[start : text.index("\n## ", start + 1)]


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", _section(), flags=re.S)


COMMANDS = [
    line
    for block in _blocks("bash")
    for line in block.splitlines()
    if line.strip() and not line.lstrip().startswith("#")
]


def _run(command: str) -> str:
    argv = shlex.split(command)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        if argv[0] == "fedmodel":
            assert main(argv[1:]) == 0, out.getvalue()
        elif argv[:2] == ["python", "-m"]:
            saved = sys.argv
            sys.argv = argv[2:]
            try:
                runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
            finally:
                sys.argv = saved
        else:
            pytest.fail(f"README command of unknown kind: {command}")
    return out.getvalue()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch folder where the README's first command wrote the example data."""
    folder = tmp_path_factory.mktemp("readme")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        assert COMMANDS[0].startswith("python -m simulations.examples.custom_data")
        assert "wrote example data to my-data" in _run(COMMANDS[0])
    return folder


def test_the_section_has_the_worked_example():
    assert len(COMMANDS) == 6 and len(_blocks("python")) == 1


@pytest.mark.parametrize("command", COMMANDS[1:], ids=lambda c: c.split("data-path=")[1][:30])
def test_each_readme_command_trains_to_the_reported_accuracy(command, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    out = _run(command)
    done = re.search(r"done in [\d.]+ s: (test|client) accuracy ([\d.]+)", out)
    assert done, out
    assert float(done.group(2)) >= ACCURACY_FLOOR, out
    if "test-data" not in command:
        assert "Central evaluation off" in out and done.group(1) == "client"


def test_the_readme_python_api_example(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    exec(compile(_blocks("python")[0], "README.md", "exec"), {})  # noqa: S102
    printed = re.search(r"test accuracy ([\d.]+), max client ε ([\d.]+)", capsys.readouterr().out)
    assert printed and float(printed.group(1)) >= ACCURACY_FLOOR
