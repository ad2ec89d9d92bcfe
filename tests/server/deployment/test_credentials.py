"""TLS certificates and SuperNode keys in the forms Flower reads."""

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from server.deployment.certificates import make_certificates
from server.deployment.node_keys import make_node_keys
from simulations.cli import main


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


def test_node_keys_are_openssh_ec_p384_and_match(tmp_path):
    keys = make_node_keys(tmp_path, name="node-0")
    private = serialization.load_ssh_private_key(keys.private_key.read_bytes(), password=None)
    public = serialization.load_ssh_public_key(keys.public_key.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(private.curve, ec.SECP384R1)
    assert private.public_key().public_numbers() == public.public_numbers()
    assert stat.S_IMODE(keys.private_key.stat().st_mode) == 0o600
    with pytest.raises(ValueError, match="plain file name"):
        make_node_keys(tmp_path, name="../node")


def test_cli_makes_certificates_and_keys(tmp_path, capsys):
    assert main(["make-certs", "--out", str(tmp_path / "c"), "--host", "127.0.0.1"]) == 0
    assert main(["make-node-key", "--out", str(tmp_path / "k"), "--name", "n"]) == 0
    out = capsys.readouterr().out
    assert "ca.crt" in out and "flwr supernode register" in out
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["n", "n.pub"]


def test_deploy_local_refuses_a_bad_config_before_starting_anything(tmp_path, capsys):
    code = main(
        [
            "deploy-local",
            "--clients",
            "2",
            "--set",
            "round-timeout=0",
            "--work-dir",
            str(tmp_path / "w"),
        ]
    )
    assert code == 2
    assert "run-config key 'round-timeout' = 0 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
