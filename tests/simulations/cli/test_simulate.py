"""``fedmodel simulate``: one job on the command line, or an experiment file."""

from __future__ import annotations

from pathlib import Path

from simulations.cli import main


def write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_command_line_rejects_a_bad_grid_before_running_anything(tmp_path, capsys):
    path = write(
        tmp_path,
        f"[experiment]\noutput-dir = '{tmp_path}/out'\n"
        "[run-config]\nnum-server-rounds = 1\nlearning-rate = [0.5, 0]\n",
    )
    assert main(["simulate", "--config", str(path)]) == 2
    error = capsys.readouterr().err
    assert str(path) in error and "'learning-rate' = 0" in error
    assert not (tmp_path / "out").exists()


def test_dry_run_lists_runs_and_applies_overrides(tmp_path, capsys):
    path = write(tmp_path, "[run-config]\nnum-server-rounds = 1\n")
    assert main(["simulate", "--config", str(path), "--dry-run", "--set", "seed=[3, 4]"]) == 0
    out = capsys.readouterr().out
    assert "2 run(s)" in out and "001_seed=3" in out and "002_seed=4" in out
