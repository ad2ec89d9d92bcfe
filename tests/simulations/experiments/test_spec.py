"""Experiment files: grid expansion and whole-grid validation, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations.experiments.spec import ExperimentError, fraction_for, load_experiment

EXAMPLES = Path(__file__).resolve().parents[3] / "simulations" / "examples"


def write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_grid_is_the_cartesian_product_without_repeated_runs(tmp_path):
    path = write(
        tmp_path,
        """
[experiment]
clients = [4, 6]
[run-config]
num-server-rounds = 1
dp = [true, false]
noise-multiplier = [1.0, 2.0]
target-epsilon = 0
""",
    )
    experiment = load_experiment(path)
    # 2 clients x (2 DP runs + 1 DP-off run: the noise multiplier cannot change it).
    assert [(r.num_clients, r.config.dp, r.grid["noise-multiplier"]) for r in experiment.runs] == [
        (4, True, 1.0),
        (4, True, 2.0),
        (4, False, None),
        (6, True, 1.0),
        (6, True, 2.0),
        (6, False, None),
    ]
    assert len(experiment.duplicates) == 2
    assert len({r.name for r in experiment.runs}) == 6


def test_example_files_are_valid():
    names = sorted(p.name for p in EXAMPLES.glob("*.toml"))
    assert len(names) >= 3
    for path in EXAMPLES.glob("*.toml"):
        if "mnist" in path.name and not Path("../shared/data/mnist.npz").exists():
            continue  # needs the MNIST archive to check client sizes
        assert load_experiment(path).runs, path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[run-config]\nnoise-multiplier = [1.0, -2.0]\n", "'noise-multiplier' = -2.0"),
        ("[run-config]\nmodel = ['mlp', 'resnet']\n", "'model' = 'resnet'"),
        ("[run-config]\nlearning-rat = 0.1\n", "unknown run-config key 'learning-rat'"),
        ("[run-config]\nseed = []\n", "key 'seed' is an empty list"),
        (
            "[run-config]\nnoise-multiplier = [1.0, 2.0]\ntarget-epsilon = 4.0\n",
            "'noise-multiplier' = [1, 2] cannot change any run: target-epsilon = 4 sets the noise",
        ),
        ("[run-config]\nrun-dir = 'x'\n", "'run-dir' = 'x' is not allowed"),
        ("[experiment]\nclient = 3\n", "unknown key 'client' in [experiment]"),
        ("[experiment]\nclients = [4, 0]\n", "key 'clients' = 0 must be an integer >= 1"),
        (
            "[experiment]\nclients = 4\nclients-per-round = [2, 5]\n",
            "in clients-per-round=5: [experiment] key 'clients-per-round' = 5 is out of range",
        ),
        # Valid alone, invalid in one combination: 2 clients hold 718 records, 1/718 < δ.
        (
            "[experiment]\nclients = [10, 2]\n[run-config]\ndelta = 0.004\n",
            "in clients=2: run-config key 'delta' = 0.004 is out of range",
        ),
        ("[run-config\n", "not valid TOML"),
    ],
)
def test_bad_experiment_names_file_key_and_value_and_writes_nothing(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ExperimentError) as raised:
        load_experiment(path)
    assert str(path) in str(raised.value)
    assert expected in str(raised.value)
    assert sorted(tmp_path.iterdir()) == [path]


def test_fraction_for_samples_exactly_the_count():
    for clients in range(1, 301):
        for count in range(1, clients + 1):
            assert int(clients * fraction_for(count, clients)) == count
