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

The functions take a cursor and run inside the caller's transaction; the daemon runs them on a
``SQLiteWorker`` (one connection, one thread), so every read-modify-write is serialised.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from tlsotp.otp.messages import TRANSACTION_ID_BYTES, ConfirmStatus
from tlsotp.pki.pem import KEY_MODE, atomic_write

PEPPER_BYTES = 32
MAX_CODE_LENGTH = 12

SCHEMA = """
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


def create_schema(cursor: sqlite3.Cursor) -> None:
    for statement in SCHEMA.split(";"):
        if statement.strip():
            cursor.execute(statement)


def issue(
    cursor: sqlite3.Cursor,
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
    cursor.execute(
        "SELECT 1 FROM otps WHERE client = ? AND transaction_text = ? AND status = 'locked' LIMIT 1",
        (client, transaction),
    )
    if cursor.fetchone() is not None:
        raise TransactionLocked(f"the transaction {transaction!r} of {client} is locked after wrong confirmations")
    transaction_id = secrets.token_bytes(TRANSACTION_ID_BYTES)
    code = generate_code(digits)
    cursor.execute(
        "UPDATE otps SET status = 'superseded' WHERE client = ? AND transaction_text = ? AND status = 'pending'",
        (client, transaction),
    )
    cursor.execute(
        "INSERT INTO otps (id, client, transaction_text, code_mac, issued_at, expires_at, status)"
        " VALUES (?, ?, ?, ?, ?, ?, 'pending')",
        (transaction_id, client, transaction, _code_mac(pepper, transaction_id, code), now, now + ttl_seconds),
    )
    return IssuedOTP(transaction_id, code, now + ttl_seconds)


def confirm(
    cursor: sqlite3.Cursor,
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
        "SELECT COALESCE(SUM(failed_attempts), 0), COALESCE(MAX(status = 'locked'), 0) FROM otps"
        " WHERE client = ? AND transaction_text = ? AND rowid > COALESCE((SELECT MAX(rowid) FROM otps"
        " WHERE client = ? AND transaction_text = ? AND status = 'used'), 0)",
        (client, transaction, client, transaction),
    )
    failed, any_locked = cursor.fetchone()
    cursor.execute(
        "SELECT id, code_mac, expires_at, status, failed_attempts FROM otps"
        " WHERE client = ? AND transaction_text = ? ORDER BY issued_at DESC, rowid DESC LIMIT 1",
        (client, transaction),
    )
    row = cursor.fetchone()
    if row is None:
        return Confirmation(ConfirmStatus.unknown_transaction, 0)
    transaction_id, stored_mac, expires_at, status, failed_here = row
    if any_locked or failed >= max_attempts:
        return Confirmation(ConfirmStatus.locked, 0)
    if status == "used":
        return Confirmation(ConfirmStatus.already_used, 0)
    if status != "pending":
        return Confirmation(ConfirmStatus.unknown_transaction, 0)
    if now >= expires_at:
        return Confirmation(ConfirmStatus.expired, 0)
    if hmac.compare_digest(_code_mac(pepper, bytes(transaction_id), code), bytes(stored_mac)):
        cursor.execute("UPDATE otps SET status = 'used' WHERE id = ?", (transaction_id,))
        return Confirmation(ConfirmStatus.accepted, 0)
    failed += 1
    if failed >= max_attempts:
        cursor.execute(
            "UPDATE otps SET status = 'locked', failed_attempts = ? WHERE id = ?", (failed_here + 1, transaction_id)
        )
        return Confirmation(ConfirmStatus.locked, 0)
    cursor.execute("UPDATE otps SET failed_attempts = ? WHERE id = ?", (failed_here + 1, transaction_id))
    return Confirmation(ConfirmStatus.wrong_code, max_attempts - failed)


def configure_connection(connection: sqlite3.Connection) -> None:
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    cursor = connection.cursor()
    create_schema(cursor)
    connection.commit()
