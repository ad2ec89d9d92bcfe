"""The ``fedmodel`` error boundary: an expected failure is one line and an exit code."""

from __future__ import annotations

import importlib
import subprocess
import sys
import urllib.error

import pytest

import fedmodel.data.mnist
import simulations.cli
from simulations.cli import EXIT_CODES, main

# The module, not the function that `simulations` exports under the same name.
SIMULATE = importlib.import_module("simulations.simulate")


def test_missing_mnist_file_is_one_line_and_exit_code_2(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "simulations.cli", "simulate", "--set", "dataset=mnist"],
        cwd=tmp_path,  # no mnist.npz in the default data-dir, the working directory
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    assert completed.stderr == (
        "fedmodel: mnist: no mnist.npz in data-dir ''; "
        "get it with `fedmodel download mnist --data-dir DIR`\n"
    )
    assert list(tmp_path.iterdir()) == []  # no run folder


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("learning-rat=0.1", "fedmodel: invalid config: unknown run-config key 'learning-rat'"),
        (
            "fraction-train=2",
            "fedmodel: invalid config: run-config key 'fraction-train' = 2 is out of range",
        ),
    ],
)
def test_bad_key_exits_2_with_its_message_and_writes_nothing(tmp_path, capsys, setting, message):
    run_dir = tmp_path / "run"
    assert main(["simulate", "--set", setting, "--run-dir", str(run_dir)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(message) and error.count("\n") == 1
    assert not run_dir.exists()


def test_debug_adds_the_traceback(tmp_path, capsys):
    code = main(["--debug", "simulate", "--set", "dataset=mnist", "--set", f"data-dir={tmp_path}"])
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("Traceback (most recent call last):")
    assert "FileNotFoundError" in error
    assert error.splitlines()[-1].startswith("fedmodel: mnist: no mnist.npz in data-dir")


def test_interrupt_exits_130_and_a_bug_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(SIMULATE, "simulate", interrupted)
    argv = ["simulate", "--run-dir", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 130
    assert capsys.readouterr().err == "fedmodel: interrupted\n"

    def buggy(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(SIMULATE, "simulate", buggy)
    with pytest.raises(RuntimeError, match="a bug"):
        main(argv)


def test_failed_download_exits_1(tmp_path, monkeypatch, capsys):
    def offline(name, *, data_dir):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(fedmodel.data.mnist, "download", offline)
    assert main(["download", "mnist", "--data-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err == "fedmodel: download failed: <urlopen error no network>\n"


def test_help_is_plain_text_and_lists_the_exit_codes(capsys):
    for argv in (
        ["--help"],
        *([name, "--help"] for name in ("simulate", "download", "deploy-local", "make-certs")),
    ):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 0
        text = capsys.readouterr().out
        assert "``" not in text and ":mod:" not in text and ":func:" not in text, argv
    main_help = subprocess.run(
        [sys.executable, "-m", "simulations.cli", "--help"], capture_output=True, text=True
    ).stdout
    assert EXIT_CODES in main_help
    for line in EXIT_CODES.splitlines()[1:]:  # the docstring documents the same codes
        code, meaning = line.split(maxsplit=1)
        assert f"- {code}: {meaning}" in simulations.cli.__doc__
