"""The TTP's state: one SQLite file holding tokens, issued certificates, revocations and the CRL.

Durability and atomicity come from SQLite: WAL journal, ``synchronous=FULL`` and one
``BEGIN IMMEDIATE`` transaction per decision, or, for the daemon's requests that arrive
together, one per group of decisions (``group``: each decision in its own savepoint, one COMMIT
for all). Spending a token and recording the certificate it bought commit together, before the
requester hears anything, so a crash (even ``kill -9``) loses no certificate a requester
received and never lets a spent token be spent again. Serials are the primary key, so one can
never be reused.

The daemon uses one ``Store`` from one worker thread; the operator's commands open their own
``Store`` on the same file while it runs, and SQLite's locks (with a busy timeout) serialise
the writers across processes.

Lineage: every certificate belongs to an *enrollment*, named by the token that started it;
renewals inherit it. Revocation, reuse detection and the lifetime cap act on the whole
enrollment (``revoke``, ``resolve_superseded``, ``renewal_problem``). Schema version 2 added
the ``enrollments`` table and ``certificates.enrollment``; ``open`` migrates a version 1 file
in one transaction.

Retention (``prune_tokens``): certificates, enrollments and revocations are the audit record
and are kept for ever. A token that never enrolled (expired, or withdrawn) is referenced by
nothing, and its row is deleted once it has been expired or withdrawn for the retention. A
spent token's row is the lineage's name (``enrollments.token_id`` and
``certificates.token_id`` reference it, and ``ttp list`` shows it), so it stays; only its MAC
key, the one thing in it derived from the secret, is erased (set to an empty blob), once it was
spent longer ago than the retention *and* the certificate it bought is no longer current
(renewed, revoked or expired): until then ``enrollment_retry`` may still need the MAC key to
recognise a lost reply's retry. A token pruned either way is unknown to the Issuer
(``unknown_token``). No schema change: version 3 holds all of this.
The same rules run on PostgreSQL (``tlsotp.ttp.postgres_store.PostgresStore``, ``--database``):
every query goes through the ``Connection`` seam, and ``_transaction`` is the one place where
the two backends take their write lock.
"""

from __future__ import annotations

import datetime
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from tlsotp import database_checks
from tlsotp.pki.builders import Revocation
from tlsotp.pki.roles import Role
from tlsotp.ttp.tokens import Token

DB_NAME = "ttp.sqlite3"
DB_MODE = 0o600  # it holds the MAC keys of unspent tokens
SCHEMA_VERSION = 3
BUSY_TIMEOUT_SECONDS = 10.0

# The first schema, as version 1 files were made; ``create`` runs it, then every migration, so a
# new file and a migrated one have exactly the same shape.
SCHEMA_V1 = """
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

# Version 2: enrollment lineage. One row per spent token: when its lineage started, and whether
# (when, why) the whole lineage was revoked. Every certificate names its enrollment.
SCHEMA_V2 = """
CREATE TABLE enrollments (
    token_id TEXT PRIMARY KEY REFERENCES tokens (id),
    started_at INTEGER NOT NULL,
    revoked_at INTEGER,
    reason TEXT
);
ALTER TABLE certificates ADD COLUMN enrollment TEXT REFERENCES enrollments (token_id);
CREATE INDEX certificates_by_enrollment ON certificates (enrollment);
"""

# Version 3: an operator may withdraw an unspent token (``tlsotp ttp withdraw``); it then
# enrolls nothing.
SCHEMA_V3 = """
ALTER TABLE tokens ADD COLUMN withdrawn_at INTEGER;
"""


class StoreError(Exception):
    """The database is missing, of another schema, or unusable."""


class StoreUnavailable(Exception):
    """The database server could not be reached, or failed in the middle of a decision: that
    decision's transaction did not commit (or committed whole), and the request may be sent again.

    ``quiet``: an outage already announced (logged once when it began), so this refusal need not
    be logged again.
    """

    def __init__(self, detail: str, *, quiet: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.quiet = quiet


class Cursor(Protocol):
    """What the store reads from a cursor; ``sqlite3.Cursor`` and psycopg's cursor both have it."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> Any: ...


class Connection(Protocol):
    """The seam between the store's SQL and a database: ``execute`` takes SQL written with ``?``
    placeholders (SQLite's own; the PostgreSQL connection rewrites them) and a parameter tuple."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...

    def close(self) -> None: ...


class TokenUnavailable(Exception):
    """The token was spent, expired or withdrawn meanwhile; ``reason`` is 'spent', 'expired',
    'withdrawn', 'unknown' or 'mismatch'."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotRenewable(Exception):
    """The certificate is unknown, expired, revoked, already superseded, or its lineage is over."""


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


def public_key_der(public_key: CertificatePublicKeyTypes) -> bytes:
    """A public key's DER SubjectPublicKeyInfo: equal bytes, equal key."""
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


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
    withdrawn_at: datetime.datetime | None = None

    def outstanding(self, now: datetime.datetime) -> bool:
        """Still usable to enroll: not spent, not withdrawn, not expired."""
        return self.spent_at is None and self.withdrawn_at is None and now < self.expires_at

    @property
    def pruned(self) -> bool:
        """Spent long ago, its MAC key erased by ``Store.prune_tokens``: it proves nothing now."""
        return not self.mac_key


@dataclass(frozen=True)
class TokenPrune:
    """What one ``prune_tokens`` did: rows deleted (expired or withdrawn, never enrolled) and
    spent tokens whose MAC key was erased."""

    deleted: int
    erased: int


@dataclass(frozen=True)
class EnrollmentRecord:
    """One lineage: started when its token was spent; once revoked, revoked for good."""

    token_id: str
    started_at: datetime.datetime
    revoked_at: datetime.datetime | None
    revocation_reason: x509.ReasonFlags | None


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
    enrollment: str | None = None

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

    def public_key_der(self) -> bytes:
        return public_key_der(self.certificate().public_key())


@dataclass(frozen=True)
class LineageRevocation:
    """What one revocation did: the certificate named, its enrollment, every serial newly revoked."""

    record: CertificateRecord
    enrollment: str | None
    serials: list[int]
    closed_lineage: bool  # the enrollment was open until now


@dataclass(frozen=True)
class StoredCRL:
    number: int
    der: bytes
    built_at: datetime.datetime
    generation: int


class Store:
    """Synchronous access to the TTP database; use one instance from one thread at a time.

    This class is the SQLite backend and holds every rule; ``tlsotp.ttp.postgres_store.PostgresStore``
    is the same class over a PostgreSQL connection, with its own schema creation and its own
    write lock (``_transaction``). The SQL shared by both is written in the subset both
    dialects run alike: ``?`` placeholders, ``INSERT ... ON CONFLICT``, integers that fit in 64
    bits (seconds, counters) and serials as lowercase hex text (up to 160 bits, more than any
    integer type holds).
    """

    def __init__(self, connection: Connection, path: Path | None, *, where: str | None = None) -> None:
        self._db = connection
        #: The SQLite file, or None for a database server.
        self.path = path
        #: What messages name: the file, or the database's URL (which holds no password).
        self.where = where if where is not None else str(path)
        #: Inside ``group``: each decision's transaction is a savepoint of the group's.
        self._grouped = False

    @classmethod
    def create(cls, path: Path) -> Store:
        """Create a new, empty database; refuses to touch an existing file."""
        path = Path(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, DB_MODE)
        os.close(fd)
        connection = _connect(path)
        store = cls(connection, path)
        connection.execute("PRAGMA journal_mode=WAL")
        with store._transaction():
            _run_script(connection, SCHEMA_V1)
            _migrate(connection, 1, now=int(time.time()))
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
        if row is not None and isinstance(row[0], int) and 1 <= row[0] < SCHEMA_VERSION:
            store = cls(connection, path)
            store._upgrade(connection)
            return store
        if row is None or row[0] != SCHEMA_VERSION:
            raise StoreError(f"{path}: schema version {row and row[0]}, expected {SCHEMA_VERSION}")
        return cls(connection, path)

    def _upgrade(self, connection: sqlite3.Connection) -> None:
        """Migrate an older file to SCHEMA_VERSION in one transaction (all or nothing)."""
        try:
            with self._transaction():
                # Read again under the write lock: another process may have migrated meanwhile.
                version = int(self._meta("schema_version"))
                if version < SCHEMA_VERSION:
                    _migrate(connection, version, now=int(time.time()))
        except (sqlite3.DatabaseError, StoreError) as exc:
            self._db.close()
            raise StoreError(f"{self.where}: cannot upgrade the database to schema version {SCHEMA_VERSION} ({exc})") from None

    def close(self) -> None:
        self._db.close()

    def check_writable(self) -> None:
        """One committed write (a health probe); ``DatabaseUnusable`` if the file cannot take it."""
        assert self.path is not None  # the SQLite backend; PostgresStore has its own
        database_checks.check_writable(cast(sqlite3.Connection, self._db), self.path)

    def backup_to(self, target: Path) -> None:
        """Copy the whole database to ``target``, a new file (0600; an existing one is never
        overwritten: ``FileExistsError``), with SQLite's online backup API: a consistent
        snapshot as of one committed transaction, taken while the daemon keeps writing (in WAL
        mode a reader blocks no writer). The copy is one self-contained file (rollback journal,
        no ``-wal``), checked with ``quick_check``; on any failure it is removed."""
        target = Path(target)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, DB_MODE)
        os.close(fd)
        try:
            with database_checks.private_files():
                copy = sqlite3.connect(target, isolation_level=None)
                try:
                    cast(sqlite3.Connection, self._db).backup(copy)
                    copy.execute("PRAGMA journal_mode=DELETE")
                    check = copy.execute("PRAGMA quick_check").fetchone()
                    if check is None or check[0] != "ok":
                        raise StoreError(f"{target}: the copy does not check out ({check and check[0]})")
                finally:
                    copy.close()
        except BaseException:
            target.unlink(missing_ok=True)
            raise
    def database_problem(self, error: sqlite3.Error) -> str:
        """The end of "the TTP's database ..." for a refusal: the cause only, never SQLite's text."""
        return database_checks.describe(error, self.path)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One decision: every read, check and write inside runs under the write lock, which is
        taken before the first read, and commits whole or not at all. Inside ``group`` it is a
        SAVEPOINT of the group's transaction: undone alone if it raises, committed with the group."""
        if self._grouped:
            self._db.execute("SAVEPOINT decision")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK TO decision")
                self._db.execute("RELEASE decision")
                raise
            self._db.execute("RELEASE decision")
            return
        # IMMEDIATE takes the write lock up front: read-check-write sequences cannot interleave.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextmanager
    def group(self) -> Iterator[None]:
        """Group commit: the decisions made inside share one transaction (one ``BEGIN
        IMMEDIATE``, one COMMIT, one fsync), each in its own savepoint; nothing inside is
        durable, so nothing may be answered, before this returns. If the transaction cannot be
        begun or committed, or SQLite ends it early (it may roll a whole transaction back on a
        full disk or an I/O error), it raises: the caller must then refuse every decision of
        the group, whatever each decided."""
        self._db.execute("BEGIN IMMEDIATE")
        self._grouped = True
        try:
            yield
            if not self.group_intact():
                raise sqlite3.OperationalError("the group's transaction was rolled back by SQLite")
            self._grouped = False
            self._db.execute("COMMIT")
        except BaseException:
            self._grouped = False
            if cast(sqlite3.Connection, self._db).in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def group_intact(self) -> bool:
        """Still inside the group's transaction (SQLite has not rolled it back on its own)."""
        return cast(sqlite3.Connection, self._db).in_transaction

    # Tokens

    def mint_token(self, name: str, role: Role, *, ttl: datetime.timedelta, now: datetime.datetime) -> Token:
        """A fresh one-time token for ``name`` in ``role``; only its MAC key is stored."""
        token = Token.generate()
        self.add_token(token.token_id, token.mac_key(), name, role, now=now, expires_at=now + ttl)
        return token

    def add_token(
        self, token_id: str, mac_key: bytes, name: str, role: Role, *, now: datetime.datetime, expires_at: datetime.datetime
    ) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT INTO tokens (id, mac_key, name, role, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                (token_id, mac_key, name, role.value, _seconds(now), _seconds(expires_at)),
            )

    def get_token(self, token_id: str) -> TokenRecord | None:
        row = self._db.execute(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE id = ?", (token_id,)).fetchone()
        return None if row is None else _token_record(row)

    def outstanding_tokens(self, now: datetime.datetime) -> list[TokenRecord]:
        """Tokens that could still enroll (not spent, withdrawn or expired), oldest first."""
        rows = self._db.execute(
            f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE spent_at IS NULL AND withdrawn_at IS NULL AND expires_at > ?"
            " ORDER BY created_at, id",
            (_seconds(now),),
        ).fetchall()
        return [_token_record(row) for row in rows]

    def withdraw_token(self, token_id: str, *, now: datetime.datetime) -> TokenRecord:
        """Withdraw an outstanding token: from now on it enrolls nothing. Raises ``TokenUnavailable``
        ('unknown', 'spent', 'withdrawn' or 'expired') when there is nothing to withdraw."""
        with self._transaction():
            if not self._db.execute(
                "UPDATE tokens SET withdrawn_at = ? WHERE id = ? AND spent_at IS NULL AND withdrawn_at IS NULL"
                " AND expires_at > ?",
                (_seconds(now), token_id, _seconds(now)),
            ).rowcount:
                raise TokenUnavailable(self._why_unavailable(token_id, now))
        record = self.get_token(token_id)
        assert record is not None
        return record

    def prune_tokens(self, *, now: datetime.datetime, retention: datetime.timedelta) -> TokenPrune:
        """Forget tokens past ``retention``, keeping what the lineage and the retry rule need
        (see the module's docstring); one transaction."""
        cutoff = _seconds(now - retention)
        with self._transaction():
            deleted = self._db.execute(
                "DELETE FROM tokens WHERE spent_at IS NULL AND (expires_at < ? OR withdrawn_at < ?)"
                " AND id NOT IN (SELECT token_id FROM enrollments)"
                " AND id NOT IN (SELECT token_id FROM certificates WHERE token_id IS NOT NULL)",
                (cutoff, cutoff),
            ).rowcount
            erased = self._db.execute(
                "UPDATE tokens SET mac_key = ? WHERE spent_at IS NOT NULL AND spent_at < ? AND length(mac_key) > 0"
                " AND NOT EXISTS (SELECT 1 FROM certificates c JOIN enrollments e ON e.token_id = tokens.id"
                "   WHERE c.serial = tokens.spent_serial AND c.superseded_by IS NULL AND c.not_after >= ?"
                "   AND e.revoked_at IS NULL AND c.serial NOT IN (SELECT serial FROM revocations))",
                (b"", cutoff, _seconds(now)),
            ).rowcount
        return TokenPrune(deleted, erased)

    def get_enrollment(self, token_id: str) -> EnrollmentRecord | None:
        row = self._db.execute(
            "SELECT token_id, started_at, revoked_at, reason FROM enrollments WHERE token_id = ?", (token_id,)
        ).fetchone()
        if row is None:
            return None
        return EnrollmentRecord(
            token_id=row[0],
            started_at=_moment(row[1]),
            revoked_at=None if row[2] is None else _moment(row[2]),
            revocation_reason=None if row[3] is None else x509.ReasonFlags(row[3]),
        )

    # Issuance

    def record_enrollment(self, token_id: str, cert: x509.Certificate, role: Role, name: str, *, now: datetime.datetime) -> None:
        """Spend the token, start its enrollment and record the certificate it bought, atomically."""
        serial = serial_text(cert.serial_number)
        with self._transaction():
            available = self._db.execute(
                "SELECT 1 FROM tokens WHERE id = ? AND spent_at IS NULL AND withdrawn_at IS NULL AND expires_at > ?"
                " AND name = ? AND role = ?",
                (token_id, _seconds(now), name, role.value),
            ).fetchone()
            if available is None:
                raise TokenUnavailable(self._why_unavailable(token_id, now))
            self._db.execute("INSERT INTO enrollments (token_id, started_at) VALUES (?, ?)", (token_id, _seconds(now)))
            self._insert_certificate(cert, serial, name, role, now, token_id=token_id, renewed_from=None, enrollment=token_id)
            self._db.execute(
                "UPDATE tokens SET spent_at = ?, spent_serial = ? WHERE id = ?", (_seconds(now), serial, token_id)
            )

    def enrollment_retry(self, token_id: str, public_key: bytes, now: datetime.datetime) -> CertificateRecord | None:
        """The certificate ``token_id`` bought, if it certifies ``public_key`` and is still current.

        Current means: not renewed, not revoked (nor its lineage), not expired. Then a request
        with this token and this key is the same enrollment once more (its reply was lost), and
        gets that certificate again; anything else is a spent token.
        """
        token = self.get_token(token_id)
        if token is None or token.spent_serial is None:
            return None
        record = self.get_certificate(token.spent_serial)
        if record is None or record.superseded_by is not None or record.revoked_at is not None or now > record.not_after:
            return None
        enrollment = self.get_enrollment(token_id)
        if enrollment is None or enrollment.revoked_at is not None:
            return None
        return record if record.public_key_der() == public_key else None

    def _why_unavailable(self, token_id: str, now: datetime.datetime) -> str:
        token = self.get_token(token_id)
        if token is None:
            return "unknown"
        if token.spent_at is not None:
            return "spent"
        if token.withdrawn_at is not None:
            return "withdrawn"
        if token.expires_at <= now:
            return "expired"
        return "mismatch"

    def record_renewal(
        self, old_serial: int, cert: x509.Certificate, *, now: datetime.datetime, max_lineage: datetime.timedelta
    ) -> None:
        """Record ``cert`` as the successor of ``old_serial``, which must still be renewable."""
        old = serial_text(old_serial)
        with self._transaction():
            current = self.get_certificate(old_serial)
            if current is None:
                raise NotRenewable(f"serial {old} was not issued by this TTP")
            enrollment = None if current.enrollment is None else self.get_enrollment(current.enrollment)
            problem = renewal_problem(current, enrollment, now, max_lineage)
            if problem:
                raise NotRenewable(problem)
            self._insert_certificate(
                cert, serial_text(cert.serial_number), current.name, current.role, now,
                token_id=None, renewed_from=old, enrollment=current.enrollment,
            )
            self._db.execute(
                "UPDATE certificates SET superseded_by = ? WHERE serial = ?", (serial_text(cert.serial_number), old)
            )

    def resolve_superseded(
        self, old_serial: int, public_key: bytes | None, *, now: datetime.datetime
    ) -> CertificateRecord | LineageRevocation:
        """A valid renewal proof for an already renewed certificate: a lost reply, or key reuse.

        If ``old_serial``'s successor is the lineage's current certificate (not renewed again,
        not revoked, not expired) and certifies ``public_key``, the request is the same renewal
        once more: return the successor, change nothing. Otherwise two parties hold the old
        key: revoke the whole lineage (keyCompromise) in this same transaction and say what was
        revoked.
        """
        with self._transaction():
            old = self.get_certificate(old_serial)
            if old is None or old.superseded_by is None:
                raise NotRenewable(f"serial {serial_text(old_serial)} was not renewed")
            successor = self.get_certificate(old.superseded_by)
            enrollment = None if old.enrollment is None else self.get_enrollment(old.enrollment)
            if (
                successor is not None
                and public_key is not None
                and successor.superseded_by is None
                and successor.revoked_at is None
                and now <= successor.not_after
                and enrollment is not None
                and enrollment.revoked_at is None
                and successor.public_key_der() == public_key
            ):
                return successor
            return self._revoke_lineage(old, x509.ReasonFlags.key_compromise, now)

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
        enrollment: str | None,
    ) -> None:
        if self._db.execute("SELECT 1 FROM certificates WHERE serial = ?", (serial,)).fetchone():
            raise SerialInUse(serial)
        self._db.execute(
            "INSERT INTO certificates"
            " (serial, name, role, not_before, not_after, issued_at, der, token_id, renewed_from, enrollment)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                enrollment,
            ),
        )

    _CERT_COLUMNS = (
        "SELECT c.serial, c.name, c.role, c.not_before, c.not_after, c.issued_at, c.der, c.token_id,"
        " c.renewed_from, c.superseded_by, r.revoked_at, r.reason, c.enrollment"
        " FROM certificates c LEFT JOIN revocations r ON r.serial = c.serial"
    )

    def get_certificate(self, serial: int) -> CertificateRecord | None:
        row = self._db.execute(self._CERT_COLUMNS + " WHERE c.serial = ?", (serial_text(serial),)).fetchone()
        return None if row is None else _certificate_record(row)

    def list_certificates(self) -> list[CertificateRecord]:
        rows = self._db.execute(self._CERT_COLUMNS + " ORDER BY c.issued_at, c.serial").fetchall()
        return [_certificate_record(row) for row in rows]

    def lineage(self, enrollment: str) -> list[CertificateRecord]:
        rows = self._db.execute(
            self._CERT_COLUMNS + " WHERE c.enrollment = ? ORDER BY c.issued_at, c.serial", (enrollment,)
        ).fetchall()
        return [_certificate_record(row) for row in rows]

    # Revocation and the CRL

    def revoke(self, serial: int, reason: x509.ReasonFlags, *, now: datetime.datetime) -> LineageRevocation:
        """Revoke ``serial``'s whole enrollment: it can never be renewed again, and every
        certificate of it not yet expired (and ``serial`` itself, expired or not) is revoked."""
        with self._transaction():
            record = self.get_certificate(serial)
            if record is None:
                raise UnknownSerial(f"no certificate with serial {serial_text(serial)} was issued by this TTP")
            revocation = self._revoke_lineage(record, reason, now)
            if not revocation.serials and not revocation.closed_lineage:
                raise AlreadyRevoked(f"serial {serial_text(serial)} is already revoked, with its whole enrollment")
        updated = self.get_certificate(serial)
        assert updated is not None
        return LineageRevocation(updated, revocation.enrollment, revocation.serials, revocation.closed_lineage)

    def _revoke_lineage(self, record: CertificateRecord, reason: x509.ReasonFlags, now: datetime.datetime) -> LineageRevocation:
        """Inside a transaction: mark the enrollment revoked and revoke its live certificates."""
        newly_revoked_lineage = False
        if record.enrollment is None:  # not part of any enrollment (cannot be renewed): itself only
            members = [record]
        else:
            newly_revoked_lineage = (
                self._db.execute(
                    "UPDATE enrollments SET revoked_at = ?, reason = ? WHERE token_id = ? AND revoked_at IS NULL",
                    (_seconds(now), reason.value, record.enrollment),
                ).rowcount
                == 1
            )
            members = self.lineage(record.enrollment)
        serials = [
            member.serial
            for member in members
            if member.revoked_at is None and (member.serial == record.serial or member.not_after >= now)
        ]
        for member in serials:
            self._db.execute(
                "INSERT INTO revocations (serial, revoked_at, reason) VALUES (?, ?, ?)",
                (serial_text(member), _seconds(now), reason.value),
            )
        if serials:
            self._db.execute("UPDATE meta SET value = value + 1 WHERE key = 'revocation_generation'")
        return LineageRevocation(record, record.enrollment, serials, newly_revoked_lineage)

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
                "INSERT INTO crl (id, number, der, built_at, generation) VALUES (1, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET number = excluded.number, der = excluded.der,"
                " built_at = excluded.built_at, generation = excluded.generation",
                (number, der, _seconds(now), generation),
            )
        return StoredCRL(number, der, _moment(_seconds(now)), generation)

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise StoreError(f"{self.where}: meta value {key} is missing")
        return int(row[0])


def lineage_end(enrollment: EnrollmentRecord, max_lineage: datetime.timedelta) -> datetime.datetime:
    """After this moment the lineage can no longer be renewed; no certificate of it outlives it."""
    return enrollment.started_at + max_lineage


def renewal_problem(
    record: CertificateRecord,
    enrollment: EnrollmentRecord | None,
    now: datetime.datetime,
    max_lineage: datetime.timedelta,
) -> str:
    """Why ``record`` may not be renewed, or '' if it may."""
    serial = serial_text(record.serial)
    if enrollment is None:
        return f"serial {serial} belongs to no enrollment; enroll with a new token"
    if enrollment.revoked_at is not None:
        return (
            f"enrollment {enrollment.token_id} (serial {serial}'s lineage) was revoked at "
            f"{enrollment.revoked_at:%Y-%m-%d %H:%M} UTC; enroll with a new token"
        )
    if record.revoked_at is not None:
        return f"serial {serial} is revoked"
    if record.superseded_by is not None:
        return f"serial {serial} was already renewed (superseded by {serial_text(record.superseded_by)})"
    if now > record.not_after:
        return f"serial {serial} expired at {record.not_after:%Y-%m-%d %H:%M} UTC"
    end = lineage_end(enrollment, max_lineage)
    if now >= end:
        return (
            f"enrollment {enrollment.token_id} started at {enrollment.started_at:%Y-%m-%d %H:%M} UTC and reached "
            f"the TTP's maximum lineage at {end:%Y-%m-%d %H:%M} UTC; a new token is needed"
        )
    return ""


def _run_script(db: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT the open transaction: run statement by statement instead.
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _migrate(db: sqlite3.Connection, version: int, *, now: int) -> None:
    """Inside a transaction: bring a file at ``version`` to SCHEMA_VERSION."""
    if version == 1:
        _migrate_1_to_2(db, now)
        version = 2
    if version == 2:
        _migrate_2_to_3(db)
        version = 3
    if version != SCHEMA_VERSION:
        raise StoreError(f"no migration from schema version {version}")


def _migrate_1_to_2(db: sqlite3.Connection, now: int) -> None:
    """Give every certificate its enrollment; carry version 1 revocations over to lineages.

    A version 1 revocation covered one serial only, which let a renewed (stolen) successor live
    on. The migration applies today's rule to it: a lineage with any revoked certificate is
    revoked (as of its first revocation, with that reason), and its certificates not yet expired
    are revoked too.
    """
    _run_script(db, SCHEMA_V2)
    db.execute(
        "INSERT INTO enrollments (token_id, started_at)"
        " SELECT id, spent_at FROM tokens WHERE spent_at IS NOT NULL AND spent_serial IS NOT NULL"
    )
    db.execute(
        "WITH RECURSIVE lineage (serial, enrollment) AS ("
        "  SELECT serial, token_id FROM certificates WHERE token_id IS NOT NULL"
        "  UNION ALL"
        "  SELECT c.serial, l.enrollment FROM certificates c JOIN lineage l ON c.renewed_from = l.serial"
        ") UPDATE certificates SET enrollment = (SELECT l.enrollment FROM lineage l WHERE l.serial = certificates.serial)"
    )
    revoked = db.execute(
        "SELECT c.enrollment, r.revoked_at, r.reason FROM revocations r JOIN certificates c ON c.serial = r.serial"
        " WHERE c.enrollment IS NOT NULL ORDER BY r.revoked_at, r.serial"
    ).fetchall()
    added = 0
    for enrollment, revoked_at, reason in revoked:
        if db.execute(
            "UPDATE enrollments SET revoked_at = ?, reason = ? WHERE token_id = ? AND revoked_at IS NULL",
            (revoked_at, reason, enrollment),
        ).rowcount:
            added += db.execute(
                "INSERT INTO revocations (serial, revoked_at, reason)"
                " SELECT serial, ?, ? FROM certificates"
                " WHERE enrollment = ? AND not_after >= ? AND serial NOT IN (SELECT serial FROM revocations)",
                (now, reason, enrollment, now),
            ).rowcount
    if added:
        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'revocation_generation'")
    db.execute("UPDATE meta SET value = 2 WHERE key = 'schema_version'")


def _migrate_2_to_3(db: sqlite3.Connection) -> None:
    """Tokens gain ``withdrawn_at``; no token of a version 2 file was withdrawn."""
    _run_script(db, SCHEMA_V3)
    db.execute("UPDATE meta SET value = 3 WHERE key = 'schema_version'")


_TOKEN_COLUMNS = "id, mac_key, name, role, created_at, expires_at, spent_at, spent_serial, withdrawn_at"


def _token_record(row: tuple[object, ...]) -> TokenRecord:
    return TokenRecord(
        token_id=str(row[0]),
        mac_key=bytes(cast(bytes, row[1])),
        name=str(row[2]),
        role=Role(row[3]),
        created_at=_moment(cast(int, row[4])),
        expires_at=_moment(cast(int, row[5])),
        spent_at=None if row[6] is None else _moment(cast(int, row[6])),
        spent_serial=None if row[7] is None else int(cast(str, row[7]), 16),
        withdrawn_at=None if row[8] is None else _moment(cast(int, row[8])),
    )


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
    (serial, name, role, not_before, not_after, issued_at, der, token_id, renewed_from, superseded_by,
     revoked_at, reason, enrollment) = row
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
        enrollment=enrollment if isinstance(enrollment, str) else None,
    )
