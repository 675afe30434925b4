"""The agent's key pair for Flower SuperNode authentication.

Flower 1.42 reads the SuperNode's private key with ``load_ssh_private_key``
(``flower-supernode --auth-supernode-private-key``) and requires an elliptic-curve key
on a NIST curve; the SuperLink's operator registers the matching public key in SSH
format (``flwr supernode register <public key file>``). The agent therefore writes an
ECDSA SECP384R1 key pair: the private key in OpenSSH format (mode 0600, unencrypted:
the SuperNode must read it unattended) and the public key as one OpenSSH line
(``ecdsa-sha2-nistp384 AAAA... fedgeo-agent``).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

PRIVATE_MODE = 0o600
KEY_COMMENT = b"fedgeo-agent"


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 from the start (never world-readable),
    replacing an existing file atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, PRIVATE_MODE)  # exact mode whatever the umask
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def generate_key_pair(private_path: Path, public_path: Path) -> str:
    """Create a new ECDSA SECP384R1 key pair; return the public key line.

    Existing files are replaced (the caller decides whether that is allowed).
    """
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    line = public + b" " + KEY_COMMENT + b"\n"
    private_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_private(private_path, private)
    public_path.write_bytes(line)
    return line.decode("ascii").strip()


def check_private_key(path: Path) -> None:
    """Raise ``ValueError`` unless ``path`` holds a key Flower's SuperNode accepts (an
    unencrypted OpenSSH elliptic-curve key) that only its owner can read."""
    key = serialization.load_ssh_private_key(path.read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: not an elliptic-curve private key")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ValueError(
            f"{path}: the private key is readable by others (mode {mode:o}); run chmod 600"
        )
