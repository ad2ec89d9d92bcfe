"""``fedmodel plot``: redraws the plots of a run folder, or of an experiment folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations.cli import main

TINY = ["--clients", "2", "--no-progress", "--set", "num-server-rounds=2", "--set", "dp=false"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("plot") / "run"
    assert main(["simulate", *TINY, "--no-plots", "--run-dir", str(folder)]) == 0
    assert not (folder / "rounds.png").exists()
    return folder


def test_plot_draws_rounds_png_of_a_run_without_plots(run_dir: Path, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    assert main(["plot", str(run_dir)]) == 0
    png = run_dir / "rounds.png"
    assert png.read_bytes().startswith(b"\x89PNG")
    assert str(png) in capsys.readouterr().out
    after = {p.name: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    assert after.pop("rounds.png") and after == before  # nothing else touched


def test_plot_redraws_an_experiment_folder(tmp_path: Path):
    spec = tmp_path / "exp.toml"
    spec.write_text(
        f"[experiment]\nname = 'tiny'\noutput-dir = '{tmp_path}/out'\n"
        "[run-config]\nnum-server-rounds = 1\ndp = false\nseed = [0, 1]\n"
    )
    assert (
        main(
            [
                "simulate",
                "--config",
                str(spec),
                "--clients",
                "2",
                "--no-plots",
                "--no-progress",
                "--run-dir",
                str(tmp_path / "exp"),
            ]
        )
        == 0
    )
    folder = tmp_path / "exp"
    assert not list(folder.rglob("*.png"))
    assert main(["plot", str(folder)]) == 0
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    assert "accuracy.png" in names and "frontier.png" in names
    assert sum(name.endswith("/rounds.png") for name in names) == 2


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_bad_run_dir_is_one_line_and_exit_code_2(tmp_path: Path, capsys, kind: str):
    folder = tmp_path / "nothing"
    if kind == "empty":
        folder.mkdir()
    assert main(["plot", str(folder)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("fedmodel: ") and error.count("\n") == 1 and str(folder) in error
