"""PNG plots of a run, and matplotlib imported only when one is drawn."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from matplotlib.image import imread

from fedmodel.config import RunConfig
from simulations.plots import plot_run
from tests.simulations.run_folders import make_run

ROOT = Path(__file__).resolve().parents[2]


def test_run_plot_is_a_readable_png_for_dp_and_plain_runs(tmp_path):
    for dp in (True, False):
        run_dir = tmp_path / f"dp-{dp}"
        make_run(run_dir, RunConfig(dp=dp, num_server_rounds=5), rounds=5)
        image = imread(plot_run(run_dir))
        assert image.shape[0] > 300 and image.shape[1] > 1000  # three panels side by side
        assert image.std() > 0.05  # not a blank canvas


def test_command_start_up_does_not_import_matplotlib():
    code = (
        "import sys, simulations.cli, simulations.experiments.runner, simulations.plots, "
        "simulations.progress, simulations.simulate; print('matplotlib' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip() == "False", result.stderr
