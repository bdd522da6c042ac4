"""The TTP's data dir: the CA key, the self-signed root and the database, created once.

Files (all in ``--data-dir``)::

    ca-key.pem     the CA's private key, mode 0600, encrypted when a passphrase is given
    ca.pem         the self-signed root certificate (public: hand it out, or its fingerprint)
    ttp.sqlite3    tokens (as derived MAC keys), issued certificates, revocations, the CRL

With ``--database URL`` the database is PostgreSQL instead (``tlsotp.ttp.postgres_store``): no
``ttp.sqlite3`` is made, and the database records the fingerprint of the CA it belongs to. The
key and the root stay files in the data dir.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tlsotp.database_url import PostgresTarget
from tlsotp.pki import pem
from tlsotp.pki.builders import build_root
from tlsotp.pki.fingerprint import fingerprint
from tlsotp.pki.keys import KeyType, PrivateKey, generate_private_key
from tlsotp.ttp.postgres_store import PostgresStore
from tlsotp.ttp.store import DB_NAME, Store, StoreError

CA_KEY_NAME = "ca-key.pem"
CA_CERT_NAME = "ca.pem"
DEFAULT_SUBJECT = "tlsotp TTP root"
DEFAULT_ROOT_DAYS = 1825
DIR_MODE = 0o700


class CAError(Exception):
    """No CA in the data dir, a CA already there, or CA files that do not belong together."""


@dataclass(frozen=True)
class CertificateAuthority:
    key: PrivateKey
    root: x509.Certificate

    @property
    def root_der(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.DER)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.root)


@dataclass(frozen=True)
class TTPPaths:
    data_dir: Path

    @property
    def key(self) -> Path:
        return self.data_dir / CA_KEY_NAME

    @property
    def root(self) -> Path:
        return self.data_dir / CA_CERT_NAME

    @property
    def db(self) -> Path:
        return self.data_dir / DB_NAME


def read_passphrase(path: Path | None) -> bytes | None:
    """The first line of ``path``; a passphrase file holds nothing else."""
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CAError(f"cannot read passphrase file {path}: {exc.strerror or exc}") from None
    passphrase = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not passphrase:
        raise CAError(f"passphrase file {path} is empty")
    return passphrase


def init_ca(
    data_dir: Path,
    *,
    key_type: KeyType = KeyType.EC_P256,
    subject: str = DEFAULT_SUBJECT,
    days: int = DEFAULT_ROOT_DAYS,
    passphrase: bytes | None = None,
    now: datetime.datetime | None = None,
    database: PostgresTarget | None = None,
) -> CertificateAuthority:
    """Create key, root and database in ``data_dir``; refuses if any of them exists.

    With ``database``, the store is that PostgreSQL database, which must not belong to another
    CA yet: it records this root's fingerprint (the key and root are removed again if it refuses)."""
    paths = TTPPaths(Path(data_dir))
    for existing in (paths.key, paths.root, *(() if database is not None else (paths.db,))):
        if existing.exists():
            raise CAError(f"{existing} already exists; refusing to overwrite an existing CA")
    paths.data_dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    key = generate_private_key(key_type)
    root = build_root(key, subject, days=days, now=now or datetime.datetime.now(datetime.timezone.utc))
    # Key first and exclusively: a crash leaves at worst a lone key, and a re-run refuses clearly.
    pem.write_private_key(paths.key, key, passphrase, exclusive=True)
    pem.atomic_write(paths.root, pem.certificate_bytes([root]), pem.PUBLIC_MODE, exclusive=True)
    ca = CertificateAuthority(key, root)
    if database is None:
        Store.create(paths.db).close()
        return ca
    try:
        PostgresStore.open_database(database, ca.fingerprint, bind=True).close()
    except StoreError as exc:
        paths.key.unlink()
        paths.root.unlink()
        raise CAError(str(exc)) from None
    return ca


def load_ca(data_dir: Path, passphrase: bytes | None = None) -> CertificateAuthority:
    paths = TTPPaths(Path(data_dir))
    if not paths.root.exists() or not paths.key.exists():
        missing = paths.root if not paths.root.exists() else paths.key
        raise CAError(f"no CA in {data_dir} ({missing.name} is missing); run 'tlsotp ttp init --data-dir {data_dir}' first")
    if os.stat(paths.key).st_mode & 0o077:
        raise CAError(f"{paths.key} is readable by others; chmod 600 it")
    try:
        key = pem.load_private_key(paths.key, passphrase)
        root = pem.load_certificate(paths.root)
    except pem.PEMError as exc:
        if passphrase is None and b"ENCRYPTED" in paths.key.read_bytes():
            raise CAError(f"{paths.key} is encrypted; give --passphrase-file") from None
        raise CAError(str(exc)) from None
    if root.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise CAError(f"{paths.key} does not belong to {paths.root}")
    return CertificateAuthority(key, root)


def load_root(data_dir: Path) -> x509.Certificate:
    """The root alone, for commands that need no key (token, revoke, list)."""
    paths = TTPPaths(Path(data_dir))
    if not paths.root.exists():
        raise CAError(f"no CA in {data_dir} ({CA_CERT_NAME} is missing); run 'tlsotp ttp init --data-dir {data_dir}' first")
    try:
        return pem.load_certificate(paths.root)
    except pem.PEMError as exc:
        raise CAError(str(exc)) from None


def open_store(data_dir: Path, database: PostgresTarget | None = None) -> Store:
    """The data dir's store: its SQLite file, or ``database``, which must belong to its CA."""
    root = load_root(data_dir)
    if database is None:
        return Store.open(TTPPaths(Path(data_dir)).db)
    return PostgresStore.open_database(database, fingerprint(root))

