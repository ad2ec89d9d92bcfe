"""``fedmodel make-certs``: modes, rotation with ``--ca-dir``, an encrypted CA key."""

import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from simulations.cli import main


@pytest.fixture
def open_umask():
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_make_certs_writes_private_files_under_umask_000(tmp_path, open_umask, capsys):
    out = tmp_path / "certs"
    assert main(["make-certs", "--out", str(out), "--host", "127.0.0.1"]) == 0
    assert {p.name: _mode(p) for p in out.iterdir()} == {
        "ca.key": 0o600,
        "server.key": 0o600,
        "ca.crt": 0o644,
        "server.pem": 0o644,
    }
    assert _mode(out) == 0o700
    assert "unencrypted" in capsys.readouterr().out


def test_an_existing_certificate_is_refused_as_one_line(tmp_path, capsys):
    args = ["make-certs", "--out", str(tmp_path), "--host", "127.0.0.1"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedmodel: refusing to overwrite") and "--overwrite" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_encrypted_ca_key_round_trip_and_rotation(tmp_path, monkeypatch, capsys):
    secret = tmp_path / "passphrase"
    secret.write_text("correct horse\n")
    ca = tmp_path / "ca"
    args = ["--host", "127.0.0.1", "--ca-passphrase-file", str(secret)]
    assert main(["make-certs", "--out", str(ca), *args]) == 0
    key = serialization.load_pem_private_key(
        (ca / "ca.key").read_bytes(), password=b"correct horse"
    )
    capsys.readouterr()
    # Without the passphrase the CA cannot sign: one line, exit code 2.
    assert (
        main(["make-certs", "--out", str(tmp_path / "x"), "--host", "h", "--ca-dir", str(ca)]) == 2
    )
    assert "encrypted: give its passphrase" in capsys.readouterr().err
    # The environment variable works as the file does.
    monkeypatch.setenv("FEDMODEL_CA_PASSPHRASE", "correct horse")
    out = tmp_path / "rotated"
    assert main(["make-certs", "--out", str(out), "--host", "127.0.0.1", "--ca-dir", str(ca)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "server.key", "server.pem"]
    server = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    server.verify_directly_issued_by(x509.load_pem_x509_certificate((ca / "ca.crt").read_bytes()))
    assert server.public_key() != key.public_key()
