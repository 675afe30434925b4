"""TLS certificates for a deployment: a self-signed CA and a SuperLink server certificate.

The SuperLink serves its Fleet API (SuperNodes), Control API (``flwr`` CLI) and Runtime
API (its own ServerApp process) over HTTPS with one certificate. Devices and the
operator's ``flwr`` CLI verify it with the CA certificate (``ca.crt``), which is public;
``ca.key`` signs server certificates and ``server.key`` proves the SuperLink's identity:
neither ever leaves the server host. Keys are ECDSA P-384, written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")
"""Names every server certificate also covers (for operators on the server host)."""


@dataclass(frozen=True)
class CertificatePaths:
    """The files :func:`make_certificates` writes."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "FedGeo deployment"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def subject_alternative_names(hosts: list[str]) -> x509.SubjectAlternativeName:
    """SAN entries for ``hosts`` plus :data:`DEFAULT_NAMES`: IP addresses as IP entries,
    anything else as a DNS name (duplicates dropped, order kept)."""
    entries: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in [*hosts, *DEFAULT_NAMES]:
        host = host.strip().strip("[]")
        if not host or host.lower() in seen:
            continue
        seen.add(host.lower())
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def _write(path: Path, data: bytes, private: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    handle = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(handle, "wb") as fh:
        fh.write(data)
    if private:
        os.chmod(path, 0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_certificates(
    out_dir: Path | str,
    hosts: list[str],
    *,
    days: int = 365,
    overwrite: bool = False,
) -> CertificatePaths:
    """Write a new CA and a server certificate for ``hosts`` into ``out_dir``.

    Parameters
    ----------
    out_dir
        Folder for ``ca.crt``, ``ca.key``, ``server.pem`` and ``server.key``.
    hosts
        Host names or IP addresses the SuperLink is reached at (the certificate also
        covers localhost, 127.0.0.1 and ::1).
    days
        Validity of both certificates.
    overwrite
        Replace existing files; otherwise an existing file raises ``FileExistsError``
        (a new CA would lock out every device holding the old ``ca.crt``).
    """
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    out = Path(out_dir)
    paths = CertificatePaths(out / CA_CERT, out / CA_KEY, out / SERVER_CERT, out / SERVER_KEY)
    existing = [p for p in paths.__dict__.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]} exists; a new CA locks out every device that trusts the old one "
            "(replace it with overwrite / --force)"
        )
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = _name("FedGeo deployment CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA384())
    )

    server_key = ec.generate_private_key(ec.SECP384R1())
    names = subject_alternative_names(list(hosts))
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(str(hosts[0]) if hosts else DEFAULT_NAMES[0]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(names, critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA384())
    )

    _write(paths.ca_key, _key_pem(ca_key), private=True)
    _write(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(paths.server_key, _key_pem(server_key), private=True)
    _write(paths.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), private=False)
    return paths
