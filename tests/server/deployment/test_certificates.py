"""TLS certificates in the forms Flower reads."""

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

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
