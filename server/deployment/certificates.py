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

from server.deployment.private_files import PRIVATE_FILE, PUBLIC_FILE, make_private_dir, write_file

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
SERVER_DAYS, CA_DAYS = 90, 3650
# Where `fedmodel make-certs` also looks for the CA key's passphrase.
PASSPHRASE_ENV = "FEDMODEL_CA_PASSPHRASE"


@dataclass(frozen=True)
class CertificatePaths:
    """Where the CA and the server certificate were written."""

    ca_cert: Path
    ca_key: Path | None
    server_cert: Path
    server_key: Path


def make_certificates(
    out_dir: str | os.PathLike[str],
    *,
    hosts: Sequence[str],
    days: int = SERVER_DAYS,
    ca_days: int = CA_DAYS,
    ca_dir: str | os.PathLike[str] | None = None,
    ca_passphrase: bytes | None = None,
    overwrite: bool = False,
) -> CertificatePaths:
    """Make a server certificate valid for ``hosts``, signed by a new or an existing CA.

    Parameters
    ----------
    out_dir : path
        Folder to write ``server.pem``, ``server.key`` and ``ca.crt`` (and, for a new CA,
        ``ca.key``) into; created ``0700``. Private keys are ``0600``, certificates
        ``0644``, whatever the umask. Keep ``ca.key`` off the SuperLink.
    hosts : sequence of str
        Every name or IP address SuperNodes and the ``flwr`` CLI use to reach the
        SuperLink (e.g. ``["127.0.0.1", "superlink.example.org"]``), and ``127.0.0.1``:
        the SuperLink's own ServerApp launcher connects to it on loopback, over TLS.
        IP addresses become IP subject alternative names, the rest DNS names.
    days : int
        Validity of the server certificate, from now (default 90: rotate it often, with
        ``ca_dir``; a CA/Browser-Forum-style short lifetime limits a leaked key's use).
    ca_days : int
        Validity of a new CA (default 3650: it is installed on every node, rotating it
        means a visit to every site). Ignored with ``ca_dir``.
    ca_dir : path, optional
        Folder of an existing ``ca.crt`` and ``ca.key`` to sign the new server
        certificate with (rotation: every node keeps trusting the same CA). May be
        ``out_dir`` itself; then only the server files are replaced (``overwrite``).
    ca_passphrase : bytes, optional
        Encrypt a new ``ca.key`` with it (PKCS#8, the best encryption ``cryptography``
        offers), or decrypt the existing ``ca_dir/ca.key``.
    overwrite : bool
        Replace existing files (otherwise an existing file is an error).

    Returns
    -------
    CertificatePaths
        ``ca_key`` is ``None`` when the CA came from ``ca_dir`` (its key is not copied).
    """
    hosts = [h.strip() for h in hosts]
    if not hosts or any(not h for h in hosts):
        raise ValueError(f"hosts must be non-empty names or IP addresses, got {list(hosts)}")
    for name, value in (("days", days), ("ca_days", ca_days)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if ca_passphrase is not None and not ca_passphrase:
        raise ValueError("the CA passphrase is empty")
    out = Path(out_dir)
    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(minutes=5)
    not_after = now + datetime.timedelta(days=days)

    if ca_dir is None:
        ca_key = ec.generate_private_key(ec.SECP384R1())
        ca_cert = _new_ca(ca_key, not_before, now + datetime.timedelta(days=ca_days))
    else:
        ca_cert, ca_key = load_ca(ca_dir, passphrase=ca_passphrase)
        if ca_cert.not_valid_after_utc < not_after:
            raise ValueError(
                f"the CA in {ca_dir} expires on {ca_cert.not_valid_after_utc:%Y-%m-%d}, before "
                f"a {days}-day server certificate would; make a new CA (without --ca-dir)"
            )
    new_ca = ca_dir is None
    same_ca_folder = not new_ca and Path(ca_dir).resolve() == out.resolve()
    paths = CertificatePaths(
        ca_cert=out / CA_CERT,
        ca_key=out / CA_KEY if new_ca else None,
        server_cert=out / SERVER_CERT,
        server_key=out / SERVER_KEY,
    )
    written = [paths.server_cert, paths.server_key]
    if not same_ca_folder:
        written.append(paths.ca_cert)
    if paths.ca_key is not None:
        written.append(paths.ca_key)
    existing = [str(p) for p in written if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        raise FileExistsError(f"refusing to overwrite {', '.join(existing)} (use --overwrite)")

    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # RFC 5280 4.2.1.3: a TLS server key signs (ECDHE) and, for RSA suites, enciphers.
        .add_extension(_key_usage(digital_signature=True, key_encipherment=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )

    make_private_dir(out)
    if paths.ca_key is not None:
        write_file(paths.ca_key, _private_pem(ca_key, ca_passphrase), mode=PRIVATE_FILE)
    write_file(paths.server_key, _private_pem(server_key, None), mode=PRIVATE_FILE)
    if not same_ca_folder:
        write_file(
            paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), mode=PUBLIC_FILE
        )
    write_file(
        paths.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), mode=PUBLIC_FILE
    )
    return paths


def load_ca(
    ca_dir: str | os.PathLike[str], *, passphrase: bytes | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Read ``ca.crt`` and ``ca.key`` of ``ca_dir``; check that they belong together."""
    folder = Path(ca_dir)
    for name in (CA_CERT, CA_KEY):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"--ca-dir {folder}: no {name} there")
    cert = x509.load_pem_x509_certificate((folder / CA_CERT).read_bytes())
    try:
        key = serialization.load_pem_private_key(
            (folder / CA_KEY).read_bytes(), password=passphrase
        )
    except TypeError as error:  # encrypted without a passphrase, or a passphrase for none
        raise ValueError(
            f"{folder / CA_KEY}: "
            + (
                f"it is encrypted: give its passphrase (--ca-passphrase-file or ${PASSPHRASE_ENV})"
                if passphrase is None
                else "it is not encrypted: give no passphrase"
            )
        ) from error
    except ValueError as error:
        raise ValueError(f"{folder / CA_KEY}: wrong passphrase or not a PEM private key") from error
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{folder / CA_KEY}: not an EC private key")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise ValueError(f"{folder / CA_KEY} is not the key of {folder / CA_CERT}")
    return cert, key


def _new_ca(
    key: ec.EllipticCurvePrivateKey, not_before: datetime.datetime, not_after: datetime.datetime
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedmodel SuperLink CA")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )


def _key_usage(**usages: bool) -> x509.KeyUsage:
    names = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    )
    return x509.KeyUsage(**{name: usages.get(name, False) for name in names})


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _private_pem(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
