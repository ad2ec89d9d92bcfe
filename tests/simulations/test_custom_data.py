"""Custom data end to end: each form trains for a round through the unchanged apps.

The data is scikit-learn's digits written in every form by the README's example
generator (``simulations/examples/custom_data.py``).
"""

import json
import math

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from fedmodel.config import ConfigError
from fedmodel.data.sources import DataError
from fedmodel.data.sources import arrays as arrays_module
from simulations import simulate
from simulations.examples.custom_data import write_examples

ONE_ROUND = {"dataset": "custom", "num-server-rounds": 1, "learning-rate": 1.0, "num-classes": 10}
CHANCE = 0.1


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("my-data")
    write_examples(root)
    return root


def _run(tmp_path, values, **kwargs):
    return simulate({**ONE_ROUND, **values, "run-dir": str(tmp_path / "run")}, **kwargs)


def _config_json(result):
    return json.loads((result.run_dir / "config.json").read_text())


def test_npz_per_client_files_with_a_central_test_set(data, tmp_path, capsys):
    result = _run(tmp_path, {"data-path": str(data / "clients" / "*"),
                             "test-data": str(data / "test.npz")})
    out = capsys.readouterr().out
    # Under DP the clients report ceil(N / 64) * 64 each (public), not their exact sizes.
    assert "Data check: 3 of 3 nodes ready, input shape (1, 8, 8), 10 classes, 1536 training" in out
    assert f"Central evaluation on {data / 'test.npz'} (360 examples)" in out
    assert result.final.test_accuracy > 3 * CHANCE
    assert math.isnan(result.final.client_accuracy)  # central evaluation only, as configured
    saved = _config_json(result)
    assert saved["num_nodes"] == 3 and saved["input_shape"] == [1, 8, 8]
    assert saved["num_classes"] == 10 and saved["excluded_nodes"] == {}
    ledgers = sorted(p.stem for p in (result.run_dir / "privacy").iterdir())
    assert ledgers == ["partition-0", "partition-1", "partition-2"]


def test_csv_split_by_a_partitioner_without_test_set_uses_client_evaluation(
    data, tmp_path, capsys
):
    csv = {"data-path": str(data / "digits.csv"), "label-column": "digit",
           "partitioner": "dirichlet", "dirichlet-alpha": 1.0}
    # Under DP a client evaluates only on a held-out split; a CSV share has none.
    private = _run(tmp_path / "dp", csv, num_clients=3)
    assert "Evaluation off: no central test set, and under DP" in capsys.readouterr().out
    assert math.isnan(private.final.client_accuracy) and private.final.clients_trained == 3
    result = _run(tmp_path, {**csv, "dp": False}, num_clients=3)
    out = capsys.readouterr().out
    assert "input shape (64,), 10 classes" in out
    assert "Central evaluation off: no run-config test-data" in out
    assert "| client acc " in out
    assert math.isnan(result.final.test_accuracy)
    assert result.final.client_accuracy > 3 * CHANCE


def test_image_folders_per_client(data, tmp_path):
    result = _run(tmp_path, {"data-path": str(data / "images" / "*"),
                             "test-data": str(data / "images-test")})
    assert _config_json(result)["input_shape"] == [1, 8, 8]
    assert result.final.clients_trained == 3
    assert result.final.test_accuracy > 3 * CHANCE


def test_numpy_folder_read_from_disk(data, tmp_path, monkeypatch):
    monkeypatch.setattr(arrays_module, "ON_DISK_MIN_BYTES", 1)  # as for a large file
    result = _run(tmp_path, {"data-path": str(data / "arrays"),
                             "test-data": str(data / "test.npz")}, num_clients=2)
    assert result.final.clients_trained == 2
    assert result.final.test_accuracy > 3 * CHANCE


def test_python_loader_pair(tmp_path):
    loader = "simulations.examples.custom_data:digits"
    result = _run(tmp_path, {"data-path": loader, "test-data": loader}, num_clients=3)
    assert result.final.test_accuracy > 3 * CHANCE


def _share(data, site):
    arrays = np.load(data / "clients" / f"site-{site}.npz")
    return TensorDataset(torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"]))


def test_python_api_objects_and_paths_one_per_client(data, tmp_path):
    shares = [_share(data, 0), _share(data, 1), data / "clients" / "site-2.npz"]
    result = _run(tmp_path, {"test-data": str(data / "test.npz")}, client_data=shares)
    assert _config_json(result)["num_nodes"] == 3
    assert result.final.clients_trained == 3
    assert result.final.test_accuracy > 3 * CHANCE


def test_a_client_with_bad_data_is_reported_by_node_and_the_run_goes_on(
    data, tmp_path, capsys
):
    site = np.load(data / "clients" / "site-2.npz")
    few = tmp_path / "few.npz"
    np.savez(few, x=site["x"][:10], y=np.arange(10))
    bad = tmp_path / "bad.npz"
    x = site["x"].copy()
    x[5, 0, 3, 3] = np.nan
    np.savez(bad, x=x, y=site["y"])
    result = _run(tmp_path, {"test-data": str(data / "test.npz")},
                  client_data=[_share(data, 0), bad, _share(data, 1), few])
    out = capsys.readouterr().out
    assert "Data check: 2 of 4 nodes ready" in out
    # The server hears where and what kind of problem, never the value (the node's log has it).
    assert (
        f"excluded node 1002: DataError: {bad}['x']: example 5 holds a non-finite value" in out
    )
    assert f"excluded node 1004: DataError: {few}: 10 examples is fewer than batch-size" in out
    excluded = _config_json(result)["excluded_nodes"]
    assert sorted(excluded) == ["1002", "1004"] and "example 5 holds a" in excluded["1002"]
    assert result.final.clients_trained == 2 and result.final.clients_failed == 0
    assert result.final.test_accuracy > 3 * CHANCE


def test_clients_with_different_input_shapes_fail_before_training_naming_the_client(
    data, tmp_path
):
    flat = tmp_path / "flat.npz"
    site = np.load(data / "clients" / "site-2.npz")
    np.savez(flat, x=site["x"].reshape(len(site["x"]), -1), y=site["y"])
    with pytest.raises(DataError, match=rf"node 1003 \({flat}\): examples have shape \(64,\) "
                                        r"but the other clients' have \(1, 8, 8\)"):
        _run(tmp_path, {}, client_data=[_share(data, 0), _share(data, 1), flat])
    assert not (tmp_path / "run").exists()


def test_no_usable_client_fails_listing_each_node(tmp_path):
    with pytest.raises(DataError, match=r"only 0 of 2 nodes have usable data \(need "
                                        r"min-train-replies = 1\): "
                                        r"node 1001: DataError: .*a.npz: no such file.*; "
                                        r"node 1002: DataError: .*b.csv: no such file"):
        _run(tmp_path, {}, client_data=[tmp_path / "a.npz", tmp_path / "b.csv"])
    assert not (tmp_path / "run").exists()


def test_a_test_set_that_does_not_fit_the_clients_fails_before_training(data, tmp_path):
    with pytest.raises(DataError, match=r"digits.csv \(test-data\): examples have shape \(64,\)"):
        _run(tmp_path, {"data-path": str(data / "clients" / "*"),
                        "test-data": str(data / "digits.csv"), "label-column": "digit"})
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("values", "kwargs", "message"),
    [
        ({}, {}, "dataset = 'custom' needs run-config key 'data-path'"),
        ({"dataset": "digits"}, {"client_data": ["a.npz"]},
         "client_data needs run-config key 'dataset' = 'custom'"),
        ({"data-path": "a.npz"}, {"client_data": ["b.npz"]}, "use one"),
        ({}, {"client_data": "clients/"}, "client_data is a list with one item per client"),
        ({}, {"client_data": ["a.npz"], "num_clients": 2},
         "num_clients = 2 but client_data has 1 items"),
        ({"dataset": "digits", "data-path": "a.npz"}, {},
         "'data-path' = 'a.npz' is out of range: must be empty unless dataset = 'custom'"),
        ({"image-size": "28y28"}, {}, "'image-size' = '28y28' is out of range"),
        ({"num-classes": 1}, {}, "'num-classes' = 1 is out of range: must be >= 2"),
        ({"image-mode": "CMYK"}, {}, "'image-mode' = 'CMYK' is not known"),
    ],
)
def test_inconsistent_custom_data_settings_are_config_errors(tmp_path, values, kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _run(tmp_path, values, **kwargs)
    assert not (tmp_path / "run").exists()


def test_a_pattern_matching_another_number_of_clients_is_refused(data, tmp_path):
    with pytest.raises(ConfigError, match="matches 3 entries but 4 clients were asked for"):
        _run(tmp_path, {"data-path": str(data / "clients" / "*")}, num_clients=4)
