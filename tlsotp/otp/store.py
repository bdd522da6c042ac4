"""The server's record of issued one-time passwords, in SQLite.

Codes are never stored: only HMAC-SHA256(pepper, transaction id || code), where the pepper is a
random key in the server's data dir (mode 0600). A six-digit code has only a million values, so
a plain hash would be reversed offline in a moment; without the pepper a stolen database is
useless. Each OTP is bound to the authenticated client name and the transaction text, expires,
and is accepted once.

Lockout is per transaction, not per code: wrong confirmations are counted over every OTP
issued for one (client, transaction) pair since its last accepted one (superseded ones
included), and when the count reaches ``max_attempts`` the pair is locked for good: every
later confirmation is ``locked`` and a new request for it is refused (``TransactionLocked``),
so asking for a fresh code does not buy more guesses. The bank must start a new transaction
(a new description) instead.

The schema is versioned (``PRAGMA user_version``; a file without one is version 1):
``configure_connection`` creates a new file at ``SCHEMA_VERSION`` and migrates an older one in
place. Version 2 added partial indexes that fit every query here, so a request, a confirmation
and a prune cost the same however many earlier rows a (client, transaction) pair has.
``prune`` deletes rows long expired but keeps what the lockout rule reads (see there). Each
connection gets a bounded page cache (``CACHE_SIZE_KIB``) that keeps the indexes' interior pages
at a million rows and more.

The rule functions take a cursor (``Cursor``: ``?`` placeholders, ``rowid`` as the insertion
order) and run inside the caller's transaction. They are the same for both backends: the daemon
runs them on a ``SQLiteGroupWorker`` (one SQLite connection, one thread, group commit), so every read-modify-write
is serialised; or, with ``--database``, on PostgreSQL (``tlsotp.otp.postgres_store``: the same
tables, a ``rowid`` identity column, and a lock per (client, transaction) pair taken first in
each transaction, which serialises each pair's decisions across servers as SQLite's one writer
does).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

from tlsotp.otp.messages import TRANSACTION_ID_BYTES, ConfirmStatus
from tlsotp.pki.pem import KEY_MODE, atomic_write

PEPPER_BYTES = 32
MAX_CODE_LENGTH = 12

# The first schema, as unversioned (version 1) files were made; ``create_schema`` runs it, then
# every migration, so a new file and a migrated one end up the same.
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS otps (
    id BLOB PRIMARY KEY,
    client TEXT NOT NULL,
    transaction_text TEXT NOT NULL,
    code_mac BLOB NOT NULL,
    issued_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'used', 'locked', 'superseded')),
    failed_attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS otps_by_client ON otps (client, transaction_text, issued_at);
"""

# Version 2: partial indexes that fit each query of ``issue``, ``confirm`` and ``prune``, so none
# walks every earlier row of a (client, transaction) pair: a pair has at most one pending row,
# at most one locked one, fewer than ``max_attempts`` rows with wrong guesses since its last
# accepted code, and the newest used row is the last entry of its index range.
MIGRATION_V2 = """
CREATE INDEX IF NOT EXISTS otps_pending ON otps (client, transaction_text) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS otps_locked ON otps (client, transaction_text) WHERE status = 'locked';
CREATE INDEX IF NOT EXISTS otps_used ON otps (client, transaction_text) WHERE status = 'used';
CREATE INDEX IF NOT EXISTS otps_failed ON otps (client, transaction_text) WHERE failed_attempts > 0;
CREATE INDEX IF NOT EXISTS otps_by_expiry ON otps (expires_at);
"""

SCHEMA_VERSION = 2
MIGRATIONS = {2: MIGRATION_V2}


class Cursor(Protocol):
    """What the rules need of a DB-API cursor (``sqlite3.Cursor`` is one; so is
    ``tlsotp.otp.postgres_store.QmarkCursor`` over psycopg's)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...

    def fetchone(self) -> Any: ...


class SchemaError(Exception):
    """The OTP database is of a schema this version does not know (made by a newer tlsotp)."""


@dataclass(frozen=True)
class IssuedOTP:
    transaction_id: bytes
    code: str
    expires_at: int


class TransactionLocked(Exception):
    """A new OTP was requested for a (client, transaction) pair that wrong guesses locked."""


@dataclass(frozen=True)
class Confirmation:
    status: ConfirmStatus
    attempts_left: int


def load_or_create_pepper(path: Path) -> bytes:
    if path.exists():
        pepper = path.read_bytes()
        if len(pepper) != PEPPER_BYTES:
            raise ValueError(f"{path}: expected {PEPPER_BYTES} bytes of OTP pepper")
        return pepper
    pepper = secrets.token_bytes(PEPPER_BYTES)
    atomic_write(path, pepper, KEY_MODE, exclusive=True)
    return pepper


def generate_code(digits: int) -> str:
    if not 4 <= digits <= MAX_CODE_LENGTH:
        raise ValueError(f"an OTP has 4 to {MAX_CODE_LENGTH} digits")
    return str(secrets.randbelow(10**digits)).zfill(digits)


def _code_mac(pepper: bytes, transaction_id: bytes, code: str) -> bytes:
    return hmac.new(pepper, transaction_id + code.encode("ascii"), hashlib.sha256).digest()


def _run_script(cursor: sqlite3.Cursor, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            cursor.execute(statement)


def schema_version(cursor: sqlite3.Cursor) -> int:
    """The file's schema version: ``PRAGMA user_version``, where 0 means an unversioned file
    (version 1 if it has the ``otps`` table, empty otherwise)."""
    version = int(cursor.execute("PRAGMA user_version").fetchone()[0])
    if version:
        return version
    found = cursor.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'otps'").fetchone()
    return 1 if found is not None else 0


def create_schema(cursor: sqlite3.Cursor) -> None:
    """Create the schema, or migrate an older file to ``SCHEMA_VERSION``, in the caller's
    transaction; raises ``SchemaError`` for a file of a newer schema."""
    version = schema_version(cursor)
    if version > SCHEMA_VERSION:
        raise SchemaError(f"OTP schema version {version} is newer than this tlsotp's ({SCHEMA_VERSION})")
    if version == SCHEMA_VERSION:
        return
    if version == 0:
        _run_script(cursor, SCHEMA_V1)
        version = 1
    # Each step is idempotent (IF NOT EXISTS): a migration cut short runs again on the next open.
    for target in range(version + 1, SCHEMA_VERSION + 1):
        _run_script(cursor, MIGRATIONS[target])
    cursor.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _is_locked(cursor: Cursor, client: str, transaction: str) -> bool:
    cursor.execute(
        "SELECT 1 FROM otps WHERE client = ? AND transaction_text = ? AND status = 'locked' LIMIT 1",
        (client, transaction),
    )
    return cursor.fetchone() is not None


def issue(
    cursor: Cursor,
    *,
    pepper: bytes,
    client: str,
    transaction: str,
    digits: int,
    ttl_seconds: int,
    now: int,
) -> IssuedOTP:
    """A fresh OTP for (client, transaction); any earlier pending one for the pair is superseded.

    Raises ``TransactionLocked`` if wrong confirmations locked the pair."""
    if _is_locked(cursor, client, transaction):
        # The transaction text is personal data and this message reaches the server's log: not in it.
        raise TransactionLocked(f"this transaction of {client} is locked after wrong confirmations")
    transaction_id = secrets.token_bytes(TRANSACTION_ID_BYTES)
    code = generate_code(digits)
    # ``confirm`` reads the pair's newest row by issue time: never earlier than the pair's last
    # row's, even if this server's clock is behind the one that issued that (several servers on
    # one database) or was stepped back. Expiry still counts from this server's ``now``.
    cursor.execute(
        "SELECT issued_at FROM otps WHERE client = ? AND transaction_text = ? ORDER BY issued_at DESC LIMIT 1",
        (client, transaction),
    )
    newest = cursor.fetchone()
    issued_at = now if newest is None else max(now, int(newest[0]))
    cursor.execute(
        "UPDATE otps SET status = 'superseded' WHERE client = ? AND transaction_text = ? AND status = 'pending'",
        (client, transaction),
    )
    cursor.execute(
        "INSERT INTO otps (id, client, transaction_text, code_mac, issued_at, expires_at, status)"
        " VALUES (?, ?, ?, ?, ?, ?, 'pending')",
        (transaction_id, client, transaction, _code_mac(pepper, transaction_id, code), issued_at, now + ttl_seconds),
    )
    return IssuedOTP(transaction_id, code, now + ttl_seconds)


def confirm(
    cursor: Cursor,
    *,
    pepper: bytes,
    client: str,
    transaction: str,
    code: str,
    max_attempts: int,
    now: int,
) -> Confirmation:
    """Check ``code`` against the newest OTP issued to ``client`` for ``transaction``.

    ``attempts_left`` is 0 except with ``wrong_code``, where it is how many more wrong
    confirmations the pair tolerates before it locks (at least 1). Failures are counted over
    every OTP of the pair; the one that reaches ``max_attempts`` locks the pair."""
    # Wrong confirmations since the pair's last accepted OTP (an accepted code ends a transaction;
    # a later request with the same text starts the count afresh), over every OTP issued since.
    cursor.execute(
        "SELECT COALESCE(SUM(failed_attempts), 0) FROM otps"
        " WHERE client = ? AND transaction_text = ? AND failed_attempts > 0 AND rowid > COALESCE((SELECT MAX(rowid)"
        " FROM otps WHERE client = ? AND transaction_text = ? AND status = 'used'), 0)",
        (client, transaction, client, transaction),
    )
    (failed,) = cursor.fetchone()
    # A locked pair stays locked (no code is issued, and so none accepted, after a lock).
    any_locked = _is_locked(cursor, client, transaction)
    cursor.execute(
        "SELECT rowid, id, code_mac, expires_at, status, failed_attempts FROM otps"
        " WHERE client = ? AND transaction_text = ? ORDER BY issued_at DESC, rowid DESC LIMIT 1",
        (client, transaction),
    )
    row = cursor.fetchone()
    if row is None:
        return Confirmation(ConfirmStatus.unknown_transaction, 0)
    # The updates below name the row by the rowid just read (same row as its id, in this
    # transaction): the table's own B-tree, not one more descent into the random-keyed id index,
    # whose leaf is seldom cached once the table has grown (docs/performance.rst, "OTP issue time
    # from 10k to 1M rows").
    row_id, transaction_id, stored_mac, expires_at, status, failed_here = row
    if any_locked or failed >= max_attempts:
        return Confirmation(ConfirmStatus.locked, 0)
    if status == "used":
        return Confirmation(ConfirmStatus.already_used, 0)
    if status != "pending":
        return Confirmation(ConfirmStatus.unknown_transaction, 0)
    if now >= expires_at:
        return Confirmation(ConfirmStatus.expired, 0)
    if hmac.compare_digest(_code_mac(pepper, bytes(transaction_id), code), bytes(stored_mac)):
        cursor.execute("UPDATE otps SET status = 'used' WHERE rowid = ?", (row_id,))
        return Confirmation(ConfirmStatus.accepted, 0)
    failed += 1
    if failed >= max_attempts:
        cursor.execute(
            "UPDATE otps SET status = 'locked', failed_attempts = ? WHERE rowid = ?", (failed_here + 1, row_id)
        )
        return Confirmation(ConfirmStatus.locked, 0)
    cursor.execute("UPDATE otps SET failed_attempts = ? WHERE rowid = ?", (failed_here + 1, row_id))
    return Confirmation(ConfirmStatus.wrong_code, max_attempts - failed)


#: The most rows one ``prune`` call deletes per statement. A group commit holds the store's one
#: thread for its whole transaction, so a prune of a day's expired rows in one go (41,666 rows at
#: a million OTPs a day: about 2.8 s of SQL and COMMIT at 1M rows) would stall every session for
#: that long; a batch of 1,000 holds it for tens of milliseconds, and the caller repeats.
PRUNE_BATCH = 1000


def prune(cursor: Cursor, *, expired_before: int, limit: int = PRUNE_BATCH) -> int:
    """Delete up to ``limit`` OTP rows per statement that expired before ``expired_before``,
    except those the lockout rule still reads; returns how many rows went (fewer than ``limit``:
    none of those is left). Runs in the caller's transaction.

    Kept whatever their age: a ``locked`` row (the pair stays locked for good); a row with wrong
    guesses and no accepted code after it (those guesses still count against the pair); and a
    ``used`` row with a kept row of wrong guesses before it (it is the boundary that stops those
    from counting). So every pair's count and lock read the same before and after, and only a
    bounded record is kept per pair (its lock, or fewer than ``max_attempts`` guessed rows).
    Any subset of these rows may go first: each one's own condition keeps the counts the same,
    so a prune in batches ends where one whole prune would.
    A pruned OTP had expired, so it could not be accepted anyway; a confirmation of it now
    answers ``unknown_transaction`` instead of ``expired`` or ``already_used``."""
    cursor.execute(
        "DELETE FROM otps WHERE rowid IN (SELECT rowid FROM otps AS old WHERE old.expires_at < ?"
        " AND old.status != 'locked' AND old.status != 'used'"
        " AND (old.failed_attempts = 0 OR EXISTS (SELECT 1 FROM otps AS later WHERE later.client = old.client"
        " AND later.transaction_text = old.transaction_text AND later.status = 'used' AND later.rowid > old.rowid))"
        " LIMIT ?)",
        (expired_before, limit),
    )
    removed = cursor.rowcount
    cursor.execute(
        "DELETE FROM otps WHERE rowid IN (SELECT rowid FROM otps AS old WHERE old.expires_at < ?"
        " AND old.status = 'used'"
        " AND NOT EXISTS (SELECT 1 FROM otps AS earlier WHERE earlier.client = old.client"
        " AND earlier.transaction_text = old.transaction_text AND earlier.failed_attempts > 0"
        " AND earlier.rowid < old.rowid)"
        " LIMIT ?)",
        (expired_before, limit),
    )
    return removed + cursor.rowcount


#: The connection's page cache, in KiB (``PRAGMA cache_size`` takes KiB as a negative number).
#: SQLite's default, 2,000 KiB (under 500 pages of 4 KiB), no longer holds the B-trees' interior
#: pages once the table has about a million rows (454 of them then, 1.8 MB, and the random leaves
#: every issue and confirm touch compete for the same slots), so statements re-read interior
#: pages through the OS. 8 MiB keeps every B-tree's interior pages up to about four million rows;
#: the leaves (keyed by client and by random id) stay as cold as the traffic makes them.
#: docs/performance.rst, "OTP issue time from 10k to 1M rows", has the measurements.
CACHE_SIZE_KIB = 8192


def configure_connection(connection: sqlite3.Connection) -> None:
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    # Per connection, not stored in the file: an old file gets it on its next open.
    connection.execute(f"PRAGMA cache_size = -{CACHE_SIZE_KIB}")
    cursor = connection.cursor()
    create_schema(cursor)
    connection.commit()
