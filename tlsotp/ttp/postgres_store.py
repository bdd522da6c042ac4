"""The TTP's state on PostgreSQL: the same ``Store`` rules over a shared database server.

``PostgresStore`` is ``tlsotp.ttp.store.Store`` with three things of its own: the connection (a
``PostgresConnection``, which rewrites the store's ``?`` placeholders, bounds every wait and
reconnects by itself), the schema (made and migrated here, in the database schema
``tlsotp_ttp``), and the write lock.

Locking. SQLite's ``BEGIN IMMEDIATE`` serialises every writer of the file. The faithful
equivalent here is one transaction-scoped advisory lock, ``pg_advisory_xact_lock(WRITE_LOCK)``,
taken as the first statement of every write transaction, by every TTP process and every operator
command on the database; it is released by COMMIT or ROLLBACK, or by the server when the session
dies. The transactions are READ COMMITTED on purpose: each statement after the lock sees every
transaction committed before the lock was granted (REPEATABLE READ would take its snapshot when
the lock statement began, before waiting, and could miss the transaction it waited for). Under
that lock each decision is the SQLite one, statement for statement, so every guarantee carries
over: a token is spent once (checked and spent in one locked transaction, together with the
certificate it bought), a serial is never reused (checked under the lock, and the primary key
besides), the CRL number only grows (read and incremented under the lock), a lineage's
revocation and reuse detection are atomic, and a retry finds the certificate already recorded.
The TTP's write rate is a few requests a second at most, so one global lock costs nothing.

Failure. Every wait is bounded (``CONNECT_TIMEOUT``, ``statement_timeout``, which also bounds
the wait for the lock, and ``idle_in_transaction_session_timeout``, which frees the lock held by
a TTP that hangs). A lost connection raises ``StoreUnavailable`` (the Issuer refuses with
``internal_error``); the first failure of an outage is reported once through ``on_event``,
reconnection is tried at most every ``RETRY_SECONDS`` and the return is reported once too. A
decision cut off before COMMIT is rolled back by the server; one cut off during COMMIT may have
committed, and the requester's retry then gets the same certificate (the idempotency rule).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from tlsotp.database_url import PostgresTarget
from tlsotp.ttp.store import Cursor, Store, StoreError, StoreUnavailable

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresConnection", "PostgresStore", "SCHEMA", "SCHEMA_VERSION"]

#: The database schema (namespace) holding the TTP's tables, apart from any other tlsotp store.
SCHEMA = "tlsotp_ttp"
#: The same numbering as the SQLite file's: version 3 is the same tables and columns.
SCHEMA_VERSION = 3
#: Advisory lock keys (64-bit): ``b"tlsotpTW"`` (writes) and ``b"tlsotpTS"`` (schema changes).
WRITE_LOCK = int.from_bytes(b"tlsotpTW", "big")
SCHEMA_LOCK = int.from_bytes(b"tlsotpTS", "big")
CONNECT_TIMEOUT = 5  # seconds, libpq's connect_timeout
STATEMENT_TIMEOUT_MS = 10_000  # as long as SQLite's busy timeout; bounds the lock wait too
IDLE_IN_TRANSACTION_MS = 30_000
RETRY_SECONDS = 1.0

# Version 3, the same shape as the SQLite file at version 3 (BYTEA for BLOB, BIGINT for the
# seconds and counters). The cycle tokens.spent_serial <-> certificates.token_id is closed last.
SCHEMA_V3 = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    mac_key BYTEA NOT NULL,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('server', 'client')),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    spent_at BIGINT,
    spent_serial TEXT,
    withdrawn_at BIGINT
);
CREATE TABLE enrollments (
    token_id TEXT PRIMARY KEY REFERENCES tokens (id),
    started_at BIGINT NOT NULL,
    revoked_at BIGINT,
    reason TEXT
);
CREATE TABLE certificates (
    serial TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('server', 'client')),
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    issued_at BIGINT NOT NULL,
    der BYTEA NOT NULL,
    token_id TEXT REFERENCES tokens (id),
    renewed_from TEXT REFERENCES certificates (serial),
    superseded_by TEXT UNIQUE REFERENCES certificates (serial),
    enrollment TEXT REFERENCES enrollments (token_id)
);
CREATE INDEX certificates_by_enrollment ON certificates (enrollment);
ALTER TABLE tokens ADD FOREIGN KEY (spent_serial) REFERENCES certificates (serial);
CREATE TABLE revocations (
    serial TEXT PRIMARY KEY REFERENCES certificates (serial),
    revoked_at BIGINT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE crl (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    number BIGINT NOT NULL,
    der BYTEA NOT NULL,
    built_at BIGINT NOT NULL,
    generation BIGINT NOT NULL
);
CREATE TABLE ca (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    fingerprint TEXT NOT NULL,
    bound_at BIGINT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('schema_version', 3), ('crl_number', 0), ('revocation_generation', 0);
"""

#: Migrations from version N to N + 1, run in order under SCHEMA_LOCK in one transaction. The
#: PostgreSQL schema began at version 3, so there is none yet; a version 4 adds its step here.
MIGRATIONS: dict[int, str] = {}


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0].strip() if text else type(error).__name__


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise StoreError("--database needs psycopg: pip install 'tlsotp[postgresql]'") from None
    return psycopg


class PostgresConnection:
    """One session with the database, reopened when lost; use it from one thread at a time.

    ``execute`` is the store's ``Connection``; ``begin``/``commit``/``rollback`` frame a write
    transaction. ``on_event(line, trouble)`` hears of an outage once when it begins and once
    when it ends.
    """

    def __init__(
        self, target: PostgresTarget, *, on_event: Callable[[str, bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._psycopg = _psycopg()
        self.target = target
        self._on_event = on_event
        self._clock = clock
        self._session: psycopg.Connection[Any] | None = None
        self._in_transaction = False
        self._down_since: float | None = None
        self._refused = 0
        self._retry_at = 0.0

    def connect(self) -> None:
        """Connect now; a failure is a ``StoreError`` (at start, the one line the operator reads)."""
        try:
            self._session = self._open()
        except self._psycopg.Error as exc:
            raise StoreError(f"cannot connect to the TTP's database {self.target.describe()}: {_one_line(exc)}") from None

    def _open(self) -> psycopg.Connection[Any]:
        session: psycopg.Connection[Any] = self._psycopg.connect(
            self.target.conninfo(), autocommit=True, connect_timeout=CONNECT_TIMEOUT, application_name="tlsotp-ttp",
            # A dead peer over TCP is noticed in about 20 s even mid-statement (no effect on a unix socket).
            keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=2, tcp_user_timeout=20_000,
        )
        try:
            session.execute(f"SET search_path TO {SCHEMA}")
            session.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
            session.execute(f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_MS}")
        except BaseException:
            session.close()
            raise
        return session

    def _live_session(self) -> psycopg.Connection[Any]:
        if self._session is not None and not self._session.closed and not self._session.broken:
            return self._session
        self._drop()
        now = self._clock()
        if self._down_since is not None and now < self._retry_at:
            raise self._refusal("not reconnected yet")
        try:
            session = self._open()
        except self._psycopg.Error as exc:
            self._retry_at = now + RETRY_SECONDS
            raise self._outage(exc) from None
        self._session = session
        if self._down_since is not None:
            self._report(
                f"the TTP's database {self.target.describe()} is back after {now - self._down_since:.1f} s; "
                f"{self._refused} requests were refused (internal_error) meanwhile", trouble=False,
            )
            self._down_since = None
            self._refused = 0
        return session

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        statement = sql.replace("?", "%s")  # the store's SQL has no literal '?' nor '%'
        for attempt in (1, 2):
            session = self._live_session()
            try:
                return session.execute(statement, parameters)
            except self._psycopg.OperationalError as exc:
                if not session.broken:  # a statement or lock timeout: this request only
                    raise StoreUnavailable(f"the database did not answer in time: {_one_line(exc)}") from None
                self._drop()
                # Outside a transaction, a session found dead (the server restarted since the
                # last request) is replaced at once, and the statement sent again: nothing of it ran.
                if self._in_transaction or attempt == 2:
                    self._in_transaction = False
                    self._retry_at = self._clock() + RETRY_SECONDS
                    raise self._outage(exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def begin(self) -> None:
        """Start a write transaction holding the TTP's write lock (see the module's docstring)."""
        self.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
        self._in_transaction = True
        try:
            self.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK,))
        except BaseException:
            self.rollback()
            raise

    def commit(self) -> None:
        try:
            self.execute("COMMIT")
        finally:
            self._in_transaction = False

    def rollback(self) -> None:
        """Roll back, or leave it to the server when the session is gone (it rolls back then)."""
        self._in_transaction = False
        session = self._session
        if session is None or session.closed or session.broken:
            return
        try:
            session.execute("ROLLBACK")
        except self._psycopg.Error:
            self._drop()

    @contextmanager
    def schema_transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """A transaction under SCHEMA_LOCK, for creating and migrating the schema (all or nothing)."""
        session = self._live_session()
        with session.transaction():
            session.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            yield session

    def close(self) -> None:
        self._drop()

    def _drop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            try:
                session.close()
            except self._psycopg.Error:
                pass

    def _outage(self, error: BaseException) -> StoreUnavailable:
        if self._down_since is None:
            self._down_since = self._clock()
            self._report(
                f"the TTP's database {self.target.describe()} is unavailable ({_one_line(error)}); refusing requests "
                f"(internal_error) until it returns, reconnecting every {RETRY_SECONDS:g} s", trouble=True,
            )
        return self._refusal(_one_line(error))

    def _refusal(self, detail: str) -> StoreUnavailable:
        self._refused += 1
        return StoreUnavailable(f"database unavailable: {detail}", quiet=self._on_event is not None)

    def _report(self, line: str, *, trouble: bool) -> None:
        if self._on_event is not None:
            self._on_event(line, trouble)


class PostgresStore(Store):
    """The TTP's store in a PostgreSQL database; one instance per thread, like ``Store``."""

    def __init__(self, connection: PostgresConnection) -> None:
        super().__init__(connection, None, where=connection.target.describe())
        self._pg = connection

    @classmethod
    def open_database(
        cls, target: PostgresTarget, ca_fingerprint: str, *, bind: bool = False,
        on_event: Callable[[str, bool], None] | None = None,
    ) -> PostgresStore:
        """Connect, create or migrate the schema, and check the database belongs to this CA.

        ``bind`` (``tlsotp ttp init --database``) records ``ca_fingerprint`` in a database that
        holds none yet. Every refusal is a ``StoreError`` of one line.
        """
        connection = PostgresConnection(target, on_event=on_event)
        connection.connect()
        store = cls(connection)
        try:
            store._prepare(ca_fingerprint, bind)
        except BaseException:
            connection.close()
            raise
        return store

    def _prepare(self, ca_fingerprint: str, bind: bool) -> None:
        psycopg = _psycopg()
        where = self.where
        try:
            with self._pg.schema_transaction() as session:
                exists = session.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.meta",)).fetchone()
                if exists is None or exists[0] is None:
                    session.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
                    for statement in SCHEMA_V3.split(";"):
                        if statement.strip():
                            session.execute(statement)
                row = session.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                version = None if row is None else int(row[0])
                if version is None or version > SCHEMA_VERSION:
                    raise StoreError(
                        f"{where}: TTP schema version {version}, newer than this tlsotp's {SCHEMA_VERSION}; "
                        "upgrade tlsotp (or point --database at another database)"
                    )
                while version < SCHEMA_VERSION:
                    if version not in MIGRATIONS:
                        raise StoreError(f"{where}: no migration from TTP schema version {version}")
                    for statement in MIGRATIONS[version].split(";"):
                        if statement.strip():
                            session.execute(statement)
                    version += 1
                    session.execute("UPDATE meta SET value = %s WHERE key = 'schema_version'", (version,))
                bound = session.execute("SELECT fingerprint FROM ca WHERE id = 1").fetchone()
                if bound is None and bind:
                    session.execute(
                        "INSERT INTO ca (id, fingerprint, bound_at) VALUES (1, %s, %s)", (ca_fingerprint, int(time.time()))
                    )
                elif bound is None:
                    raise StoreError(
                        f"{where} holds no TTP CA yet; run 'tlsotp ttp init --database URL' first"
                    )
                elif bound[0] != ca_fingerprint:
                    raise StoreError(
                        f"{where} belongs to the CA {bound[0]}, not to this data dir's CA {ca_fingerprint}; "
                        "refusing to issue under another CA's records"
                    )
        except psycopg.Error as exc:
            raise StoreError(f"{where}: cannot prepare the TTP's tables ({_one_line(exc)})") from None

    def ca_fingerprint(self) -> str | None:
        row = self._db.execute("SELECT fingerprint FROM ca WHERE id = 1").fetchone()
        return None if row is None else str(row[0])

    def check_writable(self) -> None:
        """One committed write (a health probe); ``StoreUnavailable`` when the database cannot take it."""
        with self._transaction():
            self._db.execute("UPDATE meta SET value = value WHERE key = 'schema_version'")

    def backup_to(self, target: Path) -> None:
        """Not for a database server: its own tools (``pg_dump``, base backups) do it."""
        raise StoreError(f"the TTP's store is the PostgreSQL database {self.where}: back it up with pg_dump")

    @contextmanager
    def group(self) -> Iterator[None]:
        """No shared transaction here: each decision of a group commits alone, as one request
        did before (its advisory lock, its COMMIT), and the group's answers wait for the last.
        The round trips to the server, not the commits, are this backend's cost."""
        yield

    def group_intact(self) -> bool:
        return True

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._pg.begin()
        try:
            yield
        except BaseException:
            self._pg.rollback()
            raise
        self._pg.commit()
