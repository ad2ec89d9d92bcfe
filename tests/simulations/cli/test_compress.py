"""``fedmodel compress``: a sparsity sweep of a run's model, int8, fine-tuning, the table."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from fedmodel.model_compression import weight_sparsity
from fedmodel.models import build_model
from simulations.cli import main

TINY = ["--clients", "2", "--no-progress", "--set", "num-server-rounds=2", "--set", "dp=false"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("compress") / "run"
    assert main(["simulate", *TINY, "--no-plots", "--run-dir", str(folder)]) == 0
    return folder


def rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "compressed" / "compression.csv", newline="") as file:
        return list(csv.DictReader(file))


def mlp(path: Path) -> torch.nn.Module:
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model


def test_sweep_writes_models_table_and_plot(run_dir: Path, capsys):
    args = ["compress", str(run_dir), "--prune", "0.9", "--quantize", "int8", "--sweep", "0,0.5"]
    assert main(args) == 0
    out = run_dir / "compressed"
    table = rows(run_dir)
    assert [(r["kind"], float(r["sparsity"])) for r in table] == [
        (kind, s) for s in (0.0, 0.5, 0.9) for kind in ("pruned", "pruned + int8")
    ]
    for row in table:
        assert int(row["bytes"]) == (out / row["file"]).stat().st_size
        assert 0.0 <= float(row["accuracy"]) <= 1.0
    pruned = mlp(out / "model-sparsity-0.90.pt")
    assert weight_sparsity(pruned) == pytest.approx(0.9, abs=1e-3)
    dense = next(r for r in table if r["kind"] == "pruned" and r["sparsity"] == "0.0")
    assert int(dense["nonzero"]) == int(dense["parameters"])
    assert (out / "accuracy_vs_sparsity.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "compression.md").read_text().startswith("| model |")
    assert "accuracy_vs_sparsity.png" in capsys.readouterr().out


def test_finetuned_model_keeps_the_pruned_zeros(run_dir: Path):
    args = ["compress", str(run_dir), "--prune", "0.8", "--sweep", "", "--finetune-rounds", "1"]
    assert main(args) == 0
    out = run_dir / "compressed"
    pruned = mlp(out / "model-sparsity-0.80.pt")
    tuned = mlp(out / "model-sparsity-0.80-finetuned.pt")
    for (name, before), after in zip(
        pruned.state_dict().items(), tuned.state_dict().values(), strict=True
    ):
        if name.endswith("weight"):
            assert torch.equal(after[before == 0], torch.zeros_like(after[before == 0]))
    assert weight_sparsity(tuned) >= 0.8 - 1e-3
    assert not torch.equal(
        pruned.state_dict()["layers.1.weight"], tuned.state_dict()["layers.1.weight"]
    )
    assert (out / "finetune-0.80" / "metrics.json").is_file()  # the fine-tuning run's own folder
    assert [r["kind"] for r in rows(run_dir)] == ["pruned", "fine-tuned"]


@pytest.mark.parametrize("kind", ["missing", "not-a-run"])
def test_bad_run_dir_is_one_line_and_exit_code_2(tmp_path: Path, capsys, kind: str):
    folder = tmp_path / "nothing"
    if kind == "not-a-run":
        folder.mkdir()
    assert main(["compress", str(folder)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("fedmodel: ") and error.count("\n") == 1 and str(folder) in error
    assert not (folder / "compressed").exists()


def test_bad_sparsity_is_exit_code_2(run_dir: Path, capsys):
    assert main(["compress", str(run_dir), "--prune", "1.5"]) == 2
    assert "must be in [0, 1)" in capsys.readouterr().err


def test_finetuning_again_keeps_the_earlier_finetuning_run(run_dir: Path):
    args = ["compress", str(run_dir), "--prune", "0.8", "--sweep", "", "--finetune-rounds", "1"]
    assert main(args) == 0
    out = run_dir / "compressed"
    assert (out / "finetune-0.80" / "metrics.json").is_file()
    assert (out / "finetune-0.80-2" / "metrics.json").is_file()
