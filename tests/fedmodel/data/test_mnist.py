"""MNIST downloads: checksummed, written atomically, and a clear error without network.

No test touches the network: the mirror is a closed port on the loopback interface.
"""

import gzip
import hashlib
import socket

import numpy as np
import pytest

from fedmodel.data import DownloadError, mnist


def _idx(array: np.ndarray) -> bytes:
    """``array`` (uint8) as an IDX file: zero, zero, type 0x08, rank, big-endian sizes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def closed_mirror(monkeypatch):
    """MNIST's mirror moved to a loopback port nothing listens on, with small stand-in files."""
    with socket.socket() as probe:  # a free port, closed again: connecting is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for variable in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
        monkeypatch.delenv(variable.upper(), raising=False)
    rng = np.random.default_rng(0)
    raw = {
        "x_train": _idx(rng.integers(0, 256, (6, 28, 28))),
        "y_train": _idx(np.arange(6) % 10),
        "x_test": _idx(rng.integers(0, 256, (2, 28, 28))),
        "y_test": _idx(np.arange(2)),
    }
    files = {
        key: (filename, hashlib.md5(raw[key]).hexdigest())
        for key, (filename, _) in mnist.SOURCES["mnist"][1].items()
    }
    mirror = f"http://127.0.0.1:{port}/mnist/"
    monkeypatch.setitem(mnist.SOURCES, "mnist", (mirror, files))
    return mirror, files, raw


def test_an_unreachable_mirror_says_how_to_place_the_files_by_hand(closed_mirror, tmp_path):
    mirror, files, _ = closed_mirror
    with pytest.raises(DownloadError) as error:
        mnist.download("mnist", data_dir=tmp_path, timeout=5)
    message = str(error.value)
    assert isinstance(error.value, OSError)
    assert message.startswith(f"cannot reach {mirror.split('/')[2]} (")
    assert all(filename in message for filename, _ in files.values())
    assert (
        f"into {tmp_path / 'mnist'}/ and run `fedmodel download mnist --data-dir {tmp_path}`"
        in message
    )
    assert "MD5 checksum" in message
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_files_placed_by_hand_are_checked_and_written_without_network(closed_mirror, tmp_path):
    _, files, raw = closed_mirror
    placed = mnist.official_files_dir("mnist", tmp_path)
    placed.mkdir()
    for key, (filename, _) in files.items():
        (placed / filename).write_bytes(gzip.compress(raw[key]))
    target = mnist.download("mnist", data_dir=tmp_path, timeout=5)
    assert target == mnist.archive_path("mnist", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist", "mnist.npz"]  # no temp file
    splits = mnist.load_mnist_splits("mnist", data_dir=tmp_path)
    assert len(splits.train) == 6 and len(splits.test) == 2


def test_a_placed_file_with_another_checksum_is_refused(closed_mirror, tmp_path):
    _, files, raw = closed_mirror
    placed = mnist.official_files_dir("mnist", tmp_path)
    placed.mkdir()
    for key, (filename, _) in files.items():
        (placed / filename).write_bytes(gzip.compress(raw[key] + b"\0"))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz: checksum mismatch"):
        mnist.download("mnist", data_dir=tmp_path, timeout=5)
    assert not mnist.archive_path("mnist", tmp_path).exists()
