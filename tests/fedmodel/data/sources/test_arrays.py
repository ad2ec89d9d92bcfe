"""A large client file stays on disk: loading, checking and drawing batches stays small.

The measurement runs in a fresh process reading its own ``/proc/self/status``: the
resident set (VmRSS) and its peak (VmHWM) after imports, then after the client's data
is loaded, fully checked for NaN/Inf and a few batches drawn.
"""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROWS, FEATURES = 51_200, 1_024  # float32: 200 MiB
SIZE_MB = ROWS * FEATURES * 4 / 2**20

MEASURE = r"""
import json, sys
import numpy as np
import torch
from fedmodel.data.sources import DataOptions, load_source

def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}

before = status()
source = load_source(sys.argv[1], options=DataOptions())
rng = np.random.default_rng(0)
data = source.train.dataset
for _ in range(5):
    batch = torch.stack([data[int(i)][0] for i in rng.integers(0, len(data), 64)])
last = source.train.dataset[len(source.train) - 1][0]
after = status()
print(json.dumps({
    "rss_growth_mb": after["VmRSS"] - before["VmRSS"],
    "peak_growth_mb": after["VmHWM"] - before["VmHWM"],
    "examples": len(source.train),
    "input_shape": list(source.input_shape),
    "last_row_sum": float(last.sum()),
    "mapped": type(source.train.dataset).__name__,
}))
"""


def _write_rows(file) -> None:
    chunk = 4_096
    for start in range(0, ROWS, chunk):
        rows = np.arange(start, min(start + chunk, ROWS), dtype=np.float32)[:, None]
        file.write((rows * np.ones(FEATURES, dtype=np.float32) / ROWS).tobytes())


def _header(shape, dtype) -> dict:
    return {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
            "shape": shape}


def _npy_folder(root: Path) -> Path:
    folder = root / "big"
    folder.mkdir()
    with open(folder / "x.npy", "wb") as file:
        np.lib.format.write_array_header_1_0(file, _header((ROWS, FEATURES), np.float32))
        _write_rows(file)
    np.save(folder / "y.npy", np.arange(ROWS) % 10)
    return folder


def _stored_npz(root: Path) -> Path:
    """What ``np.savez`` writes, streamed so the test itself needs no 200 MB either."""
    path = root / "big.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as file:
            np.lib.format.write_array_header_1_0(file, _header((ROWS, FEATURES), np.float32))
            _write_rows(file)
        with archive.open("y.npy", "w") as file:
            np.lib.format.write_array(file, np.arange(ROWS) % 10)
    return path


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("make", [_npy_folder, _stored_npz], ids=["npy-folder", "stored-npz"])
def test_a_200_mb_client_file_needs_far_less_than_200_mb(make, tmp_path):
    path = make(tmp_path)
    completed = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["mapped"] == "ArrayDataset"
    assert result["examples"] == ROWS and result["input_shape"] == [FEATURES]
    assert result["last_row_sum"] == pytest.approx(FEATURES * (ROWS - 1) / ROWS, rel=1e-5)
    # Everything was read once (the NaN/Inf check) yet memory grew by a small fraction.
    assert result["rss_growth_mb"] < SIZE_MB / 8, result
    assert result["peak_growth_mb"] < SIZE_MB / 8, result
