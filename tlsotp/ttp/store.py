"""The TTP's state: one SQLite file holding tokens, issued certificates, revocations and the CRL.

Durability and atomicity come from SQLite: WAL journal, ``synchronous=FULL`` and one
``BEGIN IMMEDIATE`` transaction per decision. Spending a token and recording the certificate it
bought commit together, before the requester hears anything, so a crash (even ``kill -9``)
loses no certificate a requester received and never lets a spent token be spent again. Serials
are the primary key, so one can never be reused.

The daemon uses one ``Store`` from one worker thread; the operator's commands open their own
``Store`` on the same file while it runs, and SQLite's locks (with a busy timeout) serialise
the writers across processes.
"""

from __future__ import annotations

import datetime
import os
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tlsotp import database_checks
from tlsotp.pki.authority import Revocation
from tlsotp.pki.roles import Role

DB_NAME = "ttp.sqlite3"
DB_MODE = 0o600  # it holds the MAC keys of unspent tokens
SCHEMA_VERSION = 1
BUSY_TIMEOUT_SECONDS = 10.0

SCHEMA = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    mac_key BLOB NOT NULL,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('server', 'client')),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    spent_at INTEGER,
    spent_serial TEXT REFERENCES certificates (serial)
);
CREATE TABLE certificates (
    serial TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('server', 'client')),
    not_before INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    issued_at INTEGER NOT NULL,
    der BLOB NOT NULL,
    token_id TEXT REFERENCES tokens (id),
    renewed_from TEXT REFERENCES certificates (serial),
    superseded_by TEXT UNIQUE REFERENCES certificates (serial)
);
CREATE TABLE revocations (
    serial TEXT PRIMARY KEY REFERENCES certificates (serial),
    revoked_at INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE crl (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    number INTEGER NOT NULL,
    der BLOB NOT NULL,
    built_at INTEGER NOT NULL,
    generation INTEGER NOT NULL
);
INSERT INTO meta (key, value) VALUES ('schema_version', 1), ('crl_number', 0), ('revocation_generation', 0);
"""


class StoreError(Exception):
    """The database is missing, of another schema, or unusable."""


class TokenUnavailable(Exception):
    """The token was spent or expired meanwhile; ``reason`` is 'spent', 'expired' or 'unknown'."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotRenewable(Exception):
    """The certificate is unknown, expired, revoked or already superseded."""


class SerialInUse(Exception):
    """A fresh random serial collided with an issued one: draw another."""


class UnknownSerial(Exception):
    pass


class AlreadyRevoked(Exception):
    pass


def serial_text(serial: int) -> str:
    """Serials as the TTP lists and accepts them: lowercase hex, no prefix."""
    return format(serial, "x")


def parse_serial(text: str) -> int:
    digits = text.strip().lower().replace(":", "")
    if digits.startswith("0x"):
        digits = digits[2:]
    if not digits or len(digits) > 40:
        raise ValueError(f"{text!r} is not a certificate serial (hex, as 'tlsotp ttp list' shows it)")
    try:
        return int(digits, 16)
    except ValueError:
        raise ValueError(f"{text!r} is not a certificate serial (hex, as 'tlsotp ttp list' shows it)") from None


def _seconds(moment: datetime.datetime) -> int:
    return int(moment.timestamp())


def _moment(seconds: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


@dataclass(frozen=True)
class TokenRecord:
    token_id: str
    mac_key: bytes
    name: str
    role: Role
    created_at: datetime.datetime
    expires_at: datetime.datetime
    spent_at: datetime.datetime | None
    spent_serial: int | None


@dataclass(frozen=True)
class CertificateRecord:
    serial: int
    name: str
    role: Role
    not_before: datetime.datetime
    not_after: datetime.datetime
    issued_at: datetime.datetime
    der: bytes
    token_id: str | None
    renewed_from: int | None
    superseded_by: int | None
    revoked_at: datetime.datetime | None
    revocation_reason: x509.ReasonFlags | None

    def status(self, now: datetime.datetime) -> str:
        if self.revoked_at is not None:
            reason = self.revocation_reason.name if self.revocation_reason else "unspecified"
            return f"revoked ({reason})"
        if now > self.not_after:
            return "expired"
        if self.superseded_by is not None:
            return f"superseded by {serial_text(self.superseded_by)}"
        return "valid"

    def certificate(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.der)


@dataclass(frozen=True)
class StoredCRL:
    number: int
    der: bytes
    built_at: datetime.datetime
    generation: int


class Store:
    """Synchronous access to the TTP database; use one instance from one thread at a time."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path

    @classmethod
    def create(cls, path: Path) -> Store:
        """Create a new, empty database; refuses to touch an existing file."""
        path = Path(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, DB_MODE)
        os.close(fd)
        store = cls(_connect(path), path)
        store._db.execute("PRAGMA journal_mode=WAL")
        with store._transaction():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    store._db.execute(statement)
        return store

    @classmethod
    def open(cls, path: Path) -> Store:
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"{path} does not exist; run 'tlsotp ttp init' first")
        try:
            connection = _connect(path)
            connection.execute("PRAGMA journal_mode=WAL")
            row = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(str(database_checks.unusable(path, exc) or f"{path}: not a TTP database ({exc})")) from None
        if row is None or row[0] != SCHEMA_VERSION:
            raise StoreError(f"{path}: schema version {row and row[0]}, expected {SCHEMA_VERSION}")
        return cls(connection, path)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        # IMMEDIATE takes the write lock up front: read-check-write sequences cannot interleave.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # Tokens

    def add_token(
        self, token_id: str, mac_key: bytes, name: str, role: Role, *, now: datetime.datetime, expires_at: datetime.datetime
    ) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT INTO tokens (id, mac_key, name, role, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                (token_id, mac_key, name, role.value, _seconds(now), _seconds(expires_at)),
            )

    def get_token(self, token_id: str) -> TokenRecord | None:
        row = self._db.execute(
            "SELECT id, mac_key, name, role, created_at, expires_at, spent_at, spent_serial FROM tokens WHERE id = ?",
            (token_id,),
        ).fetchone()
        if row is None:
            return None
        return TokenRecord(
            token_id=row[0],
            mac_key=bytes(row[1]),
            name=row[2],
            role=Role(row[3]),
            created_at=_moment(row[4]),
            expires_at=_moment(row[5]),
            spent_at=None if row[6] is None else _moment(row[6]),
            spent_serial=None if row[7] is None else int(row[7], 16),
        )

    # Issuance

    def record_enrollment(self, token_id: str, cert: x509.Certificate, role: Role, name: str, *, now: datetime.datetime) -> None:
        """Spend the token and record the certificate it bought, atomically."""
        serial = serial_text(cert.serial_number)
        with self._transaction():
            self._insert_certificate(cert, serial, name, role, now, token_id=token_id, renewed_from=None)
            spent = self._db.execute(
                "UPDATE tokens SET spent_at = ?, spent_serial = ? "
                "WHERE id = ? AND spent_at IS NULL AND expires_at > ? AND name = ? AND role = ?",
                (_seconds(now), serial, token_id, _seconds(now), name, role.value),
            ).rowcount
            if spent != 1:
                raise TokenUnavailable(self._why_unavailable(token_id, now))

    def _why_unavailable(self, token_id: str, now: datetime.datetime) -> str:
        token = self.get_token(token_id)
        if token is None:
            return "unknown"
        if token.spent_at is not None:
            return "spent"
        if token.expires_at <= now:
            return "expired"
        return "mismatch"

    def record_renewal(self, old_serial: int, cert: x509.Certificate, *, now: datetime.datetime) -> None:
        """Record ``cert`` as the successor of ``old_serial``, which must still be renewable."""
        old = serial_text(old_serial)
        with self._transaction():
            current = self.get_certificate(old_serial)
            if current is None:
                raise NotRenewable(f"serial {old} was not issued by this TTP")
            problem = renewal_problem(current, now)
            if problem:
                raise NotRenewable(problem)
            self._insert_certificate(
                cert, serial_text(cert.serial_number), current.name, current.role, now, token_id=None, renewed_from=old
            )
            self._db.execute(
                "UPDATE certificates SET superseded_by = ? WHERE serial = ?", (serial_text(cert.serial_number), old)
            )

    def _insert_certificate(
        self,
        cert: x509.Certificate,
        serial: str,
        name: str,
        role: Role,
        now: datetime.datetime,
        *,
        token_id: str | None,
        renewed_from: str | None,
    ) -> None:
        if self._db.execute("SELECT 1 FROM certificates WHERE serial = ?", (serial,)).fetchone():
            raise SerialInUse(serial)
        self._db.execute(
            "INSERT INTO certificates (serial, name, role, not_before, not_after, issued_at, der, token_id, renewed_from)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                serial,
                name,
                role.value,
                _seconds(cert.not_valid_before_utc),
                _seconds(cert.not_valid_after_utc),
                _seconds(now),
                cert.public_bytes(serialization.Encoding.DER),
                token_id,
                renewed_from,
            ),
        )

    _CERT_COLUMNS = (
        "SELECT c.serial, c.name, c.role, c.not_before, c.not_after, c.issued_at, c.der, c.token_id,"
        " c.renewed_from, c.superseded_by, r.revoked_at, r.reason"
        " FROM certificates c LEFT JOIN revocations r ON r.serial = c.serial"
    )

    def get_certificate(self, serial: int) -> CertificateRecord | None:
        row = self._db.execute(self._CERT_COLUMNS + " WHERE c.serial = ?", (serial_text(serial),)).fetchone()
        return None if row is None else _certificate_record(row)

    def list_certificates(self) -> list[CertificateRecord]:
        rows = self._db.execute(self._CERT_COLUMNS + " ORDER BY c.issued_at, c.serial").fetchall()
        return [_certificate_record(row) for row in rows]

    # Revocation and the CRL

    def revoke(self, serial: int, reason: x509.ReasonFlags, *, now: datetime.datetime) -> CertificateRecord:
        with self._transaction():
            record = self.get_certificate(serial)
            if record is None:
                raise UnknownSerial(f"no certificate with serial {serial_text(serial)} was issued by this TTP")
            if record.revoked_at is not None:
                raise AlreadyRevoked(f"serial {serial_text(serial)} is already revoked")
            self._db.execute(
                "INSERT INTO revocations (serial, revoked_at, reason) VALUES (?, ?, ?)",
                (serial_text(serial), _seconds(now), reason.value),
            )
            self._db.execute("UPDATE meta SET value = value + 1 WHERE key = 'revocation_generation'")
        updated = self.get_certificate(serial)
        assert updated is not None
        return updated

    def revocations(self) -> list[Revocation]:
        rows = self._db.execute("SELECT serial, revoked_at, reason FROM revocations ORDER BY revoked_at, serial").fetchall()
        return [Revocation(int(row[0], 16), _moment(row[1]), x509.ReasonFlags(row[2])) for row in rows]

    def revocation_generation(self) -> int:
        return int(self._meta("revocation_generation"))

    def current_crl(self) -> StoredCRL | None:
        row = self._db.execute("SELECT number, der, built_at, generation FROM crl WHERE id = 1").fetchone()
        if row is None:
            return None
        return StoredCRL(row[0], bytes(row[1]), _moment(row[2]), row[3])

    def rebuild_crl(self, build: Callable[[list[Revocation], int], bytes], *, now: datetime.datetime) -> StoredCRL:
        """Sign a new CRL under the next CRL number; the number is stored with it, never reused."""
        with self._transaction():
            generation = self.revocation_generation()
            number = int(self._meta("crl_number")) + 1
            der = build(self.revocations(), number)
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'crl_number'", (number,))
            self._db.execute(
                "INSERT OR REPLACE INTO crl (id, number, der, built_at, generation) VALUES (1, ?, ?, ?, ?)",
                (number, der, _seconds(now), generation),
            )
        return StoredCRL(number, der, _moment(_seconds(now)), generation)

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise StoreError(f"{self.path}: meta value {key} is missing")
        return int(row[0])


def renewal_problem(record: CertificateRecord, now: datetime.datetime) -> str:
    """Why ``record`` may not be renewed, or '' if it may."""
    serial = serial_text(record.serial)
    if record.revoked_at is not None:
        return f"serial {serial} is revoked"
    if now > record.not_after:
        return f"serial {serial} expired at {record.not_after:%Y-%m-%d %H:%M} UTC"
    if record.superseded_by is not None:
        return f"serial {serial} was already renewed (superseded by {serial_text(record.superseded_by)})"
    return ""


def _connect(path: Path) -> sqlite3.Connection:
    """A connection to a database that passed the checks (intact after WAL recovery, writable)."""
    try:
        database_checks.check_directory(path)
        with database_checks.private_files():
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
            connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False)
            try:
                connection.execute("PRAGMA synchronous=FULL")
                connection.execute("PRAGMA foreign_keys=ON")
                database_checks.check_connection(connection, path)
            except BaseException:
                connection.close()
                raise
    except sqlite3.Error as exc:
        raise StoreError(str(database_checks.unusable(path, exc) or f"{path}: {exc}")) from None
    except database_checks.DatabaseUnusable as exc:
        raise StoreError(str(exc)) from None
    return connection


def _certificate_record(row: tuple[object, ...]) -> CertificateRecord:
    serial, name, role, not_before, not_after, issued_at, der, token_id, renewed_from, superseded_by, revoked_at, reason = row
    assert isinstance(serial, str) and isinstance(name, str) and isinstance(role, str)
    assert isinstance(not_before, int) and isinstance(not_after, int) and isinstance(issued_at, int)
    assert isinstance(der, bytes)
    return CertificateRecord(
        serial=int(serial, 16),
        name=name,
        role=Role(role),
        not_before=_moment(not_before),
        not_after=_moment(not_after),
        issued_at=_moment(issued_at),
        der=der,
        token_id=token_id if isinstance(token_id, str) else None,
        renewed_from=int(renewed_from, 16) if isinstance(renewed_from, str) else None,
        superseded_by=int(superseded_by, 16) if isinstance(superseded_by, str) else None,
        revoked_at=_moment(revoked_at) if isinstance(revoked_at, int) else None,
        revocation_reason=x509.ReasonFlags(reason) if isinstance(reason, str) else None,
    )
