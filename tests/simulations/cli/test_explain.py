"""``fedmodel explain RUN_DIR``: attribution files of a tiny digits run."""

import numpy as np
import pytest

from fedmodel import explain as domain
from simulations.cli import explain as command
from simulations.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "digits"
    argv = ["simulate", "--run-dir", str(path), "--no-plots", "--no-progress", "--clients", "3"]
    assert main([*argv, "--set", "num-server-rounds=2"]) == 0
    return path


def test_explain_writes_the_maps_and_the_raw_attributions(run_dir, capsys):
    assert main(["explain", str(run_dir), "--per-class", "2"]) == 0
    out = capsys.readouterr().out
    assert "server's test set (no client data)" in out
    folder = run_dir / "explain"
    png = folder / "integrated-gradients-maps.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    values = np.load(folder / "integrated-gradients-attributions.npy")
    labels = np.load(folder / "integrated-gradients-labels.npy")
    assert values.shape == (20, 1, 8, 8) and np.isfinite(values).all()
    assert labels.tolist() == [c for c in range(10) for _ in range(2)]
    assert np.load(folder / "integrated-gradients-inputs.npy").shape == values.shape


def test_explain_with_another_method(run_dir):
    assert main(["explain", str(run_dir), "--method", "gradient-shap", "--per-class", "1"]) == 0
    assert (run_dir / "explain" / "gradient-shap-maps.png").is_file()
    assert np.load(run_dir / "explain" / "gradient-shap-attributions.npy").shape == (10, 1, 8, 8)


def test_a_bad_run_dir_is_one_line_and_exit_code_2(tmp_path, capsys):
    assert main(["explain", str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "not a run folder (no config.json)" in error


def test_the_command_offers_the_domains_methods():
    assert command.METHODS == domain.METHODS


def test_tabular_attributions_give_a_feature_importance_bar_chart(tmp_path):
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    explanation = domain.Explanation(
        method="lime",
        inputs=np.zeros((3, 4), dtype=np.float32),
        attributions=values,
        labels=np.array([0, 1, 1]),
        indices=np.array([0, 1, 2]),
    )
    path = command.plot_importance(explanation, tmp_path / "lime-importance.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
