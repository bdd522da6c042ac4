"""PEM files on disk: private keys written 0600 and atomically, certificates, CRLs.

Writes go to a temporary file in the same directory, are fsynced, then renamed, so a crash
leaves either the old file or the new one, never half of one. Keys are created with mode 0600
from the start (never chmod-ed after the fact, which would leave a window).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from tlsotp.pki.keys import PrivateKey, UnacceptableKey, check_public_key

KEY_MODE = 0o600
PUBLIC_MODE = 0o644


class PEMError(ValueError):
    """A file that is missing, unreadable, or not the PEM object expected."""


def atomic_write(path: Path, data: bytes, mode: int, *, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` atomically with ``mode``; with ``exclusive``, refuse to replace."""
    path = Path(path)
    if exclusive and path.exists():
        raise FileExistsError(f"{path} already exists; refusing to overwrite it")
    # Unique per write: threads of one process, or a reused pid after a crash, never collide.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        if exclusive:
            # link() fails if the target appeared meanwhile: no silent overwrite.
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_key_bytes(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption
    if passphrase:
        encryption = serialization.BestAvailableEncryption(passphrase)
    else:
        encryption = serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def write_private_key(
    path: Path, key: PrivateKey, passphrase: bytes | None = None, *, exclusive: bool = False
) -> None:
    atomic_write(path, private_key_bytes(key, passphrase), KEY_MODE, exclusive=exclusive)


def load_private_key(path: Path, passphrase: bytes | None = None) -> PrivateKey:
    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=passphrase or None)
    except TypeError as exc:
        # cryptography says TypeError for "encrypted but no password" and the reverse.
        raise PEMError(f"{path}: {exc}") from None
    except (ValueError, UnsupportedAlgorithm):
        raise PEMError(f"{path}: not a PEM private key, or the passphrase is wrong") from None
    try:
        check_public_key(key.public_key())
    except UnacceptableKey as exc:
        raise PEMError(f"{path}: {exc}") from None
    return key  # type: ignore[return-value]  # check_public_key limits it to EC or RSA


def certificate_bytes(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def write_certificates(path: Path, certs: Sequence[x509.Certificate]) -> None:
    atomic_write(path, certificate_bytes(certs), PUBLIC_MODE)


def load_certificates(path: Path) -> list[x509.Certificate]:
    data = _read(path)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except (ValueError, x509.InvalidVersion):
        raise PEMError(f"{path}: not a PEM certificate") from None
    return certs


def load_certificate(path: Path) -> x509.Certificate:
    certs = load_certificates(path)
    if len(certs) != 1:
        raise PEMError(f"{path}: expected one certificate, found {len(certs)}")
    return certs[0]


def write_crl(path: Path, crl: x509.CertificateRevocationList) -> None:
    atomic_write(path, crl.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)


def load_crl(path: Path) -> x509.CertificateRevocationList:
    data = _read(path)
    try:
        return x509.load_pem_x509_crl(data)
    except (ValueError, x509.InvalidVersion):
        raise PEMError(f"{path}: not a PEM CRL") from None


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise PEMError(f"{path}: {exc.strerror or exc}") from None
