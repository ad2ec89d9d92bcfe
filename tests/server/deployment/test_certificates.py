"""TLS certificates in the forms Flower reads."""

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from server.deployment.certificates import make_certificates


def test_server_certificate_is_signed_by_the_ca_for_every_host(tmp_path):
    paths = make_certificates(tmp_path, hosts=["localhost", "10.0.0.7", "link.example.org"])
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "link.example.org"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = serialization.load_pem_private_key(paths.server_key.read_bytes(), password=None)
    assert key.public_key().public_numbers() == server.public_key().public_numbers()
    for private in (paths.ca_key, paths.server_key):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_existing_files_are_not_overwritten_unless_asked(tmp_path):
    make_certificates(tmp_path, hosts=["localhost"])
    before = (tmp_path / "ca.crt").read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        make_certificates(tmp_path, hosts=["localhost"])
    assert (tmp_path / "ca.crt").read_bytes() == before
    make_certificates(tmp_path, hosts=["localhost"], overwrite=True)
    assert (tmp_path / "ca.crt").read_bytes() != before
    with pytest.raises(ValueError, match="hosts must be non-empty"):
        make_certificates(tmp_path / "x", hosts=[])


def _modes(folder):
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.iterdir()]}


def test_files_and_folder_are_private_whatever_the_umask(tmp_path, open_umask):
    paths = make_certificates(tmp_path / "certs", hosts=["localhost"])
    assert _modes(paths.ca_cert.parent) == {
        "certs": 0o700,
        "ca.key": 0o600,
        "server.key": 0o600,
        "ca.crt": 0o644,
        "server.pem": 0o644,
    }


def test_server_certificate_says_what_its_key_is_for(tmp_path):
    paths = make_certificates(tmp_path, hosts=["localhost"])
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    usage = server.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and usage.value.key_encipherment
    assert not usage.value.key_cert_sign
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    ski = server.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(server.public_key())
    aki = server.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    # Years for the CA (installed at every site), months for the server certificate.
    ca_days = (ca.not_valid_after_utc - ca.not_valid_before_utc).days
    server_days = (server.not_valid_after_utc - server.not_valid_before_utc).days
    assert (ca_days, server_days) == (3650, 90)


def test_rotation_with_ca_dir_signs_a_new_server_certificate_with_the_same_ca(tmp_path):
    first = make_certificates(tmp_path / "a", hosts=["localhost"], ca_passphrase=b"s3cret")
    assert b"ENCRYPTED" in first.ca_key.read_bytes()
    ca_before = first.ca_cert.read_bytes()
    with pytest.raises(ValueError, match="encrypted: give its passphrase"):
        make_certificates(tmp_path / "b", hosts=["localhost"], ca_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="wrong passphrase"):
        make_certificates(
            tmp_path / "b", hosts=["localhost"], ca_dir=tmp_path / "a", ca_passphrase=b"nope"
        )
    assert not (tmp_path / "b").exists()  # refused before anything was written
    rotated = make_certificates(
        tmp_path / "b",
        hosts=["localhost", "127.0.0.1"],
        days=30,
        ca_dir=tmp_path / "a",
        ca_passphrase=b"s3cret",
    )
    assert rotated.ca_key is None and not (tmp_path / "b" / "ca.key").exists()
    assert rotated.ca_cert.read_bytes() == ca_before
    ca = x509.load_pem_x509_certificate(ca_before)
    new = x509.load_pem_x509_certificate(rotated.server_cert.read_bytes())
    new.verify_directly_issued_by(ca)
    assert (
        new.serial_number
        != x509.load_pem_x509_certificate(first.server_cert.read_bytes()).serial_number
    )
    # In place: only the server files change, and only with overwrite.
    with pytest.raises(FileExistsError, match="server.pem"):
        make_certificates(
            tmp_path / "a", hosts=["localhost"], ca_dir=tmp_path / "a", ca_passphrase=b"s3cret"
        )
    make_certificates(
        tmp_path / "a",
        hosts=["localhost"],
        ca_dir=tmp_path / "a",
        ca_passphrase=b"s3cret",
        overwrite=True,
    )
    assert first.ca_cert.read_bytes() == ca_before
    x509.load_pem_x509_certificate(first.server_cert.read_bytes()).verify_directly_issued_by(ca)
    with pytest.raises(ValueError, match="expires on"):
        make_certificates(
            tmp_path / "c",
            hosts=["localhost"],
            days=4000,
            ca_dir=tmp_path / "a",
            ca_passphrase=b"s3cret",
        )
