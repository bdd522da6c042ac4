"""The server's record of issued one-time passwords, in SQLite.

Codes are never stored: only HMAC-SHA256(pepper, transaction id || code), where the pepper is a
random key in the server's data dir (mode 0600). A six-digit code has only a million values, so
a plain hash would be reversed offline in a moment; without the pepper a stolen database is
useless. Each OTP is bound to the authenticated client name and the transaction text, expires,
is accepted once, and locks after a bounded number of wrong guesses.

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
    """A fresh OTP for (client, transaction); any earlier pending one for the pair is superseded."""
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
    """Check ``code`` against the newest OTP issued to ``client`` for ``transaction``."""
    cursor.execute(
        "SELECT id, code_mac, expires_at, status, failed_attempts FROM otps"
        " WHERE client = ? AND transaction_text = ? ORDER BY issued_at DESC, rowid DESC LIMIT 1",
        (client, transaction),
    )
    row = cursor.fetchone()
    if row is None:
        return Confirmation(ConfirmStatus.unknown_transaction, 0)
    transaction_id, stored_mac, expires_at, status, failed = row
    left = max(max_attempts - failed, 0)
    if status == "used":
        return Confirmation(ConfirmStatus.already_used, 0)
    if status == "locked":
        return Confirmation(ConfirmStatus.locked, 0)
    if status != "pending":
        return Confirmation(ConfirmStatus.unknown_transaction, 0)
    if now >= expires_at:
        return Confirmation(ConfirmStatus.expired, 0)
    if hmac.compare_digest(_code_mac(pepper, bytes(transaction_id), code), bytes(stored_mac)):
        cursor.execute("UPDATE otps SET status = 'used' WHERE id = ?", (transaction_id,))
        return Confirmation(ConfirmStatus.accepted, left)
    failed += 1
    if failed >= max_attempts:
        cursor.execute(
            "UPDATE otps SET status = 'locked', failed_attempts = ? WHERE id = ?", (failed, transaction_id)
        )
        return Confirmation(ConfirmStatus.locked, 0)
    cursor.execute("UPDATE otps SET failed_attempts = ? WHERE id = ?", (failed, transaction_id))
    return Confirmation(ConfirmStatus.wrong_code, max_attempts - failed)


def configure_connection(connection: sqlite3.Connection) -> None:
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    cursor = connection.cursor()
    create_schema(cursor)
    connection.commit()
