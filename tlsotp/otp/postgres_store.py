"""The OTP store on PostgreSQL: the schema, its versioning, the pepper check and the pair lock.

The rules are ``tlsotp.otp.store``'s, unchanged: its functions run here on a ``QmarkCursor``
(its ``?`` placeholders become psycopg's ``%s``) over the same table, where ``rowid`` is an
identity column standing for SQLite's implicit insertion order. What differs is how one
decision stays one decision when several servers share the database:

- ``lock_pair`` runs first in every ``issue`` and ``confirm`` transaction: a transaction-scoped
  advisory lock on a 64-bit key derived from (client, transaction). Two servers deciding for the
  same pair queue on it, as two writers queue on SQLite's ``BEGIN IMMEDIATE``; the lock is
  released by COMMIT or ROLLBACK (or the connection dying), never held past the transaction.
  The transactions must be READ COMMITTED (PostgreSQL's default): each later statement then
  reads everything committed before the lock was granted. Under REPEATABLE READ the snapshot
  would be taken by the lock statement itself, before the wait, and could miss the previous
  holder's commit.
- ``create_schema`` creates or migrates in one transaction under another advisory lock, so two
  servers starting at once do not race their ``CREATE TABLE``; the version is in
  ``schema_version`` (one row per store: ``otp`` here), numbered like the SQLite file's
  ``user_version`` (PostgreSQL databases start at 2, SQLite's current schema).
- The pepper never enters the database: ``otp_pepper_check`` holds HMAC(pepper, a fixed label),
  written by the first server and compared by every later one, so a server given another pepper
  file refuses to start instead of issuing codes no other server can check.

No Twisted, and psycopg is not imported: the cursor is handed in (``tlsotp.services.postgres_pool``).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Callable, Protocol, Sequence

from tlsotp.otp.store import SCHEMA_VERSION, SchemaError

__all__ = [
    "PepperMismatch",
    "QmarkCursor",
    "create_schema",
    "lock_pair",
    "pair_lock_key",
    "pepper_check_value",
    "schema_version",
]

STORE_NAME = "otp"

# The schema at version 2 (the SQLite file's current one): the same columns and partial indexes,
# BYTEA for BLOB, BIGINT for times (an INTEGER here would end in 2038), and ``rowid`` an
# identity column, as SQLite's implicit one is the insertion order that the rules compare.
SCHEMA_V2 = """
CREATE TABLE otps (
    rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    id BYTEA PRIMARY KEY,
    client TEXT NOT NULL,
    transaction_text TEXT NOT NULL,
    code_mac BYTEA NOT NULL,
    issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'used', 'locked', 'superseded')),
    failed_attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX otps_by_client ON otps (client, transaction_text, issued_at);
CREATE INDEX otps_pending ON otps (client, transaction_text) WHERE status = 'pending';
CREATE INDEX otps_locked ON otps (client, transaction_text) WHERE status = 'locked';
CREATE INDEX otps_used ON otps (client, transaction_text, rowid) WHERE status = 'used';
CREATE INDEX otps_failed ON otps (client, transaction_text) WHERE failed_attempts > 0;
CREATE INDEX otps_by_expiry ON otps (expires_at);
CREATE TABLE otp_pepper_check (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    check_value BYTEA NOT NULL
);
"""

# Later versions: {version: script}, each run in the migrating transaction.
MIGRATIONS: dict[int, str] = {}

PEPPER_CHECK_LABEL = b"tlsotp OTP pepper check v1"


def _key(label: bytes) -> int:
    """A signed 64-bit advisory lock key (``pg_advisory_xact_lock(bigint)``)."""
    return int.from_bytes(hashlib.sha256(label).digest()[:8], "big", signed=True)


SCHEMA_LOCK_KEY = _key(b"tlsotp otp schema")


class QmarkCursor:
    """A psycopg cursor seen as ``tlsotp.otp.store.Cursor``: ``?`` placeholders become ``%s``.

    The store's SQL has no ``%`` and no ``?`` inside a literal, so the rewrite is exact."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> QmarkCursor:
        if "%" in sql:
            raise ValueError("the OTP store's SQL holds no '%'")
        self._cursor.execute(sql.replace("?", "%s"), tuple(parameters))
        return self

    def fetchone(self) -> Any:
        return self._cursor.fetchone()


class Executing(Protocol):
    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any: ...

    def fetchone(self) -> Any: ...


class PepperMismatch(Exception):
    """This server's pepper is not the one the database's codes were made with."""


def pair_lock_key(client: str, transaction: str) -> int:
    # The client name (a DNS name) holds no NUL: the pair is encoded without ambiguity.
    return _key(b"tlsotp otp pair\x00" + client.encode() + b"\x00" + transaction.encode())


def lock_pair(cursor: Executing, client: str, transaction: str) -> None:
    """Serialise this transaction with every other one deciding for (client, transaction), on
    any server; held until this transaction ends. A key collision only serialises more."""
    cursor.execute("SELECT pg_advisory_xact_lock(?)", (pair_lock_key(client, transaction),))
    cursor.fetchone()


def pepper_check_value(pepper: bytes) -> bytes:
    return hmac.new(pepper, PEPPER_CHECK_LABEL, hashlib.sha256).digest()


def schema_version(cursor: Executing) -> int:
    """The database's OTP schema version (0: no OTP tables yet)."""
    cursor.execute("SELECT to_regclass('schema_version') IS NOT NULL")
    if not cursor.fetchone()[0]:
        return 0
    cursor.execute("SELECT version FROM schema_version WHERE store = ?", (STORE_NAME,))
    row = cursor.fetchone()
    return 0 if row is None else int(row[0])


def _run_script(cursor: Executing, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            cursor.execute(statement)


def create_schema(cursor: Executing, load_pepper: Callable[[bool], bytes]) -> bytes:
    """Create or migrate the schema to ``SCHEMA_VERSION`` and check the pepper, in the caller's
    transaction (one transaction: a failure leaves the database as it was); returns the pepper.

    ``load_pepper(initialising)`` reads this server's pepper; ``initialising`` is true when the
    database has no pepper check yet (it may then make a new pepper). Raises ``SchemaError``
    for a newer schema and ``PepperMismatch`` for another pepper."""
    cursor.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK_KEY,))
    cursor.fetchone()
    version = schema_version(cursor)
    if version > SCHEMA_VERSION:
        raise SchemaError(f"OTP schema version {version} is newer than this tlsotp's ({SCHEMA_VERSION})")
    if version < SCHEMA_VERSION:
        cursor.execute("CREATE TABLE IF NOT EXISTS schema_version (store TEXT PRIMARY KEY, version INTEGER NOT NULL)")
        if version == 0:
            _run_script(cursor, SCHEMA_V2)
            version = 2
        for target in range(version + 1, SCHEMA_VERSION + 1):
            _run_script(cursor, MIGRATIONS[target])
        cursor.execute(
            "INSERT INTO schema_version (store, version) VALUES (?, ?)"
            " ON CONFLICT (store) DO UPDATE SET version = excluded.version",
            (STORE_NAME, SCHEMA_VERSION),
        )
    cursor.execute("SELECT check_value FROM otp_pepper_check")
    row = cursor.fetchone()
    pepper = load_pepper(row is None)
    check = pepper_check_value(pepper)
    if row is None:
        cursor.execute("INSERT INTO otp_pepper_check (check_value) VALUES (?)", (check,))
    elif not hmac.compare_digest(bytes(row[0]), check):
        raise PepperMismatch(
            "this server's OTP pepper is not the one the database's codes were made with: "
            "give every server a copy of the first server's pepper file (--otp-pepper-file, mode 0600)"
        )
    return pepper
