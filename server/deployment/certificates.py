"""TLS material for a SuperLink: a private CA and a server certificate signed by it.

Flower's SuperLink takes ``--ssl-ca-certfile``, ``--ssl-certfile`` and ``--ssl-keyfile``;
SuperNodes and the ``flwr`` CLI verify it with the CA certificate
(``--root-certificates`` / ``root-certificates`` in ``$FLWR_HOME/config.toml``). Flower
ships no command that makes these files (its docs use an ``openssl`` script), so this
module makes them with the ``cryptography`` package.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"


@dataclass(frozen=True)
class CertificatePaths:
    """Where the CA and the server certificate were written."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def make_certificates(
    out_dir: str | os.PathLike[str],
    *,
    hosts: Sequence[str],
    days: int = 365,
    overwrite: bool = False,
) -> CertificatePaths:
    """Make a CA and a server certificate valid for ``hosts``.

    Parameters
    ----------
    out_dir : path
        Folder to write ``ca.crt``, ``ca.key``, ``server.pem`` and ``server.key`` into.
        Private keys are written with mode 0600. Keep ``ca.key`` off the SuperLink.
    hosts : sequence of str
        Every name or IP address SuperNodes and the ``flwr`` CLI use to reach the
        SuperLink (e.g. ``["127.0.0.1", "superlink.example.org"]``), and ``127.0.0.1``:
        the SuperLink's own ServerApp launcher connects to it on loopback, over TLS.
        IP addresses become IP subject alternative names, the rest DNS names.
    days : int
        Validity of both certificates, from now.
    overwrite : bool
        Replace existing files (otherwise an existing file is an error).

    Returns
    -------
    CertificatePaths
    """
    hosts = [h.strip() for h in hosts]
    if not hosts or any(not h for h in hosts):
        raise ValueError(f"hosts must be non-empty names or IP addresses, got {list(hosts)}")
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    out = Path(out_dir)
    paths = CertificatePaths(
        ca_cert=out / CA_CERT,
        ca_key=out / CA_KEY,
        server_cert=out / SERVER_CERT,
        server_key=out / SERVER_KEY,
    )
    existing = [str(p) for p in vars(paths).values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"refusing to overwrite {', '.join(existing)} (use overwrite)")

    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedmodel SuperLink CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )

    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )

    out.mkdir(parents=True, exist_ok=True)
    _write(paths.ca_key, _private_pem(ca_key), private=True)
    _write(paths.server_key, _private_pem(server_key), private=True)
    _write(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(paths.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    return paths


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
