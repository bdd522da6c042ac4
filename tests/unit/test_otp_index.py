"""The OTP store's indexes fit its queries (issue 12): each hot statement's plan, taken from the
statements the store really runs (SQLite's trace of them, parameters bound), searches the
partial index made for it, and re-requests for one (client, transaction) do not cost more SQLite
steps as the pair's rows pile up; a confirmation's update names its row by rowid (no search of
the random-keyed id index). Also the version 1 -> 2 migration of an existing file, and the
bounded page cache every open sets (``store.CACHE_SIZE_KIB``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from twisted.trial import unittest

from tlsotp.otp import store
from tlsotp.otp.messages import ConfirmStatus

PEPPER = b"p" * 32
CLIENT = "alice.example"
TX = "Rs 5 to Bob"

# The schema exactly as files were made before it had a version (main before issue 12).
OLD_SCHEMA = """
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


def issue(db: sqlite3.Connection, now: int, tx: str = TX) -> store.IssuedOTP:
    with db:
        return store.issue(db.cursor(), pepper=PEPPER, client=CLIENT, transaction=tx, digits=6, ttl_seconds=60, now=now)


def confirm(db: sqlite3.Connection, code: str, now: int, tx: str = TX) -> store.Confirmation:
    with db:
        return store.confirm(
            db.cursor(), pepper=PEPPER, client=CLIENT, transaction=tx, code=code, max_attempts=3, now=now
        )


def traced(db: sqlite3.Connection, action: object) -> list[str]:
    """The statements (parameters bound) ``action()`` runs on ``db``."""
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    try:
        action()  # type: ignore[operator]
    finally:
        db.set_trace_callback(None)
    return [s for s in statements if s.split()[0].upper() in ("SELECT", "UPDATE", "DELETE")]


def plan(db: sqlite3.Connection, statement: str) -> list[str]:
    return [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + statement)]


def uses(plan_line: str, index: str) -> bool:
    if index == ROWID:
        return "USING INTEGER PRIMARY KEY (rowid=?)" in plan_line
    return f"USING INDEX {index} " in plan_line or f"USING COVERING INDEX {index} " in plan_line


#: ``assert_plans``' name for a search of the table itself by rowid.
ROWID = "rowid"


def steps(db: sqlite3.Connection, action: object) -> int:
    """How many SQLite virtual machine instructions (in hundreds) ``action()`` costs."""
    count = 0

    def tick() -> int:
        nonlocal count
        count += 1
        return 0

    db.set_progress_handler(tick, 100)
    try:
        action()  # type: ignore[operator]
    finally:
        db.set_progress_handler(None, 0)
    return count


class IndexPlanTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.db = sqlite3.connect(str(Path(self.mktemp() + ".sqlite3")))
        store.configure_connection(self.db)
        self.addCleanup(self.db.close)
        # A pair with a history: many superseded requests, wrong guesses, an accepted code.
        for i in range(300):
            issue(self.db, 1000 + i)
        confirm(self.db, "x", 1300)
        last = issue(self.db, 1301)
        self.assertEqual(confirm(self.db, last.code, 1302).status, ConfirmStatus.accepted)
        for i in range(300):
            issue(self.db, 1400 + i)

    def assert_plans(self, statements: list[str], expected: dict[str, str]) -> None:
        """Each statement containing a key's text searches the named index (``ROWID``: the
        table's own B-tree by rowid); none scans."""
        seen = set()
        for statement in statements:
            lines = plan(self.db, statement)
            for line in lines:
                self.assertNotIn("SCAN", line, f"{statement}: {lines}")
            for fragment, index in expected.items():
                if fragment in statement:
                    seen.add(fragment)
                    self.assertTrue(any(uses(line, index) for line in lines), f"{statement}: {lines}")
        self.assertEqual(seen, set(expected), statements)

    def test_issue_searches_the_locked_and_pending_indexes(self) -> None:
        statements = traced(self.db, lambda: issue(self.db, 2000))
        self.assert_plans(statements, {"status = 'locked'": "otps_locked", "status = 'pending'": "otps_pending"})

    def test_confirm_searches_the_failure_used_and_locked_indexes(self) -> None:
        statements = traced(self.db, lambda: confirm(self.db, "y", 1500))
        self.assert_plans(
            statements,
            {
                "SUM(failed_attempts)": "otps_failed",
                "status = 'used'": "otps_used",
                "status = 'locked'": "otps_locked",
                "ORDER BY issued_at DESC": "otps_by_client",
                # The row just read, by its rowid: no descent into the random-keyed id index.
                "SET failed_attempts": ROWID,
            },
        )

    def test_the_confirmations_updates_name_the_row_by_rowid(self) -> None:
        """Accepted, wrong and locking confirmations update the row they read by its rowid and
        never search the id index (whose leaves are random, so seldom cached in a big table)."""
        fresh = issue(self.db, 3000, tx="fresh")
        statements = traced(self.db, lambda: confirm(self.db, "x", 3001, tx="fresh"))
        statements += traced(self.db, lambda: confirm(self.db, fresh.code, 3001, tx="fresh"))
        issue(self.db, 3002, tx="to lock")
        for _ in range(3):
            statements += traced(self.db, lambda: confirm(self.db, "x", 3003, tx="to lock"))
        updates = [s for s in statements if s.startswith("UPDATE")]
        self.assertEqual([u.split(" WHERE ")[0].split(" SET ")[1].split(" = ")[0] for u in updates],
                         ["failed_attempts", "status", "failed_attempts", "failed_attempts", "status"])
        for statement in statements:
            self.assertFalse(any("sqlite_autoindex_otps_1" in line for line in plan(self.db, statement)), statement)
        for update in updates:
            self.assertTrue(any(uses(line, ROWID) for line in plan(self.db, update)), update)
        # And the rows are the ones confirmed: the fresh code is used, the other pair locked.
        self.assertEqual(confirm(self.db, fresh.code, 3004, tx="fresh").status, ConfirmStatus.already_used)
        self.assertEqual(confirm(self.db, "x", 3004, tx="to lock").status, ConfirmStatus.locked)
        with self.assertRaises(store.TransactionLocked):
            issue(self.db, 3005, tx="to lock")

    def test_prune_searches_the_expiry_index(self) -> None:
        statements = traced(self.db, lambda: store.prune(self.db.cursor(), expired_before=1200))
        self.db.rollback()
        self.assert_plans(statements, {"DELETE": "otps_by_expiry", "later.status = 'used'": "otps_used",
                                       "earlier.failed_attempts > 0": "otps_failed"})

    def test_re_requests_do_not_get_slower_as_the_pair_grows(self) -> None:
        now = 5000

        def one_request() -> int:
            nonlocal now
            now += 1
            return steps(self.db, lambda: issue(self.db, now))

        def one_confirm() -> int:
            nonlocal now
            return steps(self.db, lambda: confirm(self.db, "z", now))

        small_issue, small_confirm = one_request(), one_confirm()
        for _ in range(2000):
            now += 1
            issue(self.db, now)
        # 2000 more rows for the pair; a walk over them would cost thousands of steps more.
        self.assertLessEqual(one_request(), small_issue + 5)
        self.assertLessEqual(one_confirm(), small_confirm + 5)


class MigrationTests(unittest.SynchronousTestCase):
    def test_a_file_of_the_old_schema_is_migrated_and_keeps_its_rows(self) -> None:
        path = self.mktemp() + ".sqlite3"
        old = sqlite3.connect(path)
        old.executescript(OLD_SCHEMA)
        with old:
            issued = store.issue(
                old.cursor(), pepper=PEPPER, client=CLIENT, transaction=TX, digits=6, ttl_seconds=60, now=1000
            )
            for _ in range(3):
                store.confirm(old.cursor(), pepper=PEPPER, client=CLIENT, transaction="locked one",
                              code="1", max_attempts=3, now=1000)
        old.execute("INSERT INTO otps VALUES (x'01', ?, 'locked one', x'00', 1, 61, 'pending', 0)", (CLIENT,))
        old.execute("UPDATE otps SET status = 'locked', failed_attempts = 3 WHERE id = x'01'")
        old.commit()
        self.assertEqual(old.execute("PRAGMA user_version").fetchone()[0], 0)
        old.close()

        db = sqlite3.connect(path)
        self.addCleanup(db.close)
        self.assertEqual(store.schema_version(db.cursor()), 1)
        store.configure_connection(db)
        self.assertEqual(db.execute("PRAGMA user_version").fetchone()[0], store.SCHEMA_VERSION)
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        self.assertLessEqual({"otps_pending", "otps_locked", "otps_used", "otps_failed", "otps_by_expiry"}, names)
        # The old rows work under the new schema: the pending code is accepted, the lock holds.
        self.assertEqual(confirm(db, issued.code, 1001).status, ConfirmStatus.accepted)
        self.assertEqual(confirm(db, "1", 1001, tx="locked one").status, ConfirmStatus.locked)
        with self.assertRaises(store.TransactionLocked):
            issue(db, 1002, tx="locked one")
        # Opening again is a no-op.
        store.configure_connection(db)
        self.assertEqual(db.execute("PRAGMA user_version").fetchone()[0], store.SCHEMA_VERSION)

    def test_a_new_file_is_made_at_the_current_version(self) -> None:
        db = sqlite3.connect(self.mktemp() + ".sqlite3")
        self.addCleanup(db.close)
        store.configure_connection(db)
        self.assertEqual(store.schema_version(db.cursor()), store.SCHEMA_VERSION)

    def test_a_file_of_a_newer_schema_is_refused(self) -> None:
        db = sqlite3.connect(self.mktemp() + ".sqlite3")
        self.addCleanup(db.close)
        db.execute(f"PRAGMA user_version = {store.SCHEMA_VERSION + 1}")
        with self.assertRaises(store.SchemaError):
            store.configure_connection(db)


class PageCacheTests(unittest.SynchronousTestCase):
    """``configure_connection`` sets the bounded page cache on every open (it is per connection,
    not in the file), so a file made before it gets it too."""

    def cache_kib(self, db: sqlite3.Connection) -> int:
        return -int(db.execute("PRAGMA cache_size").fetchone()[0])

    def test_a_new_file_gets_the_cache(self) -> None:
        db = sqlite3.connect(self.mktemp() + ".sqlite3")
        self.addCleanup(db.close)
        self.assertEqual(self.cache_kib(db), 2000)  # SQLite's default, for contrast
        store.configure_connection(db)
        self.assertEqual(self.cache_kib(db), store.CACHE_SIZE_KIB)
        self.assertEqual(store.CACHE_SIZE_KIB, 8192)

    def test_an_old_file_gets_the_cache_when_opened(self) -> None:
        path = self.mktemp() + ".sqlite3"
        old = sqlite3.connect(path)
        old.executescript(OLD_SCHEMA)
        old.close()
        db = sqlite3.connect(path)
        self.addCleanup(db.close)
        store.configure_connection(db)
        self.assertEqual(self.cache_kib(db), store.CACHE_SIZE_KIB)
        self.assertEqual(store.schema_version(db.cursor()), store.SCHEMA_VERSION)

    def test_the_daemons_connection_has_it(self) -> None:
        from tlsotp.services.otp_authority import DATABASE_FILE
        from tlsotp.services.sqlite_worker import open_sqlite

        data = Path(self.mktemp())
        data.mkdir()
        db = open_sqlite(data / DATABASE_FILE, store.configure_connection)  # as OTPAuthority opens it
        self.addCleanup(db.close)
        self.assertEqual(self.cache_kib(db), store.CACHE_SIZE_KIB)


class AuthoritySchemaTests(unittest.SynchronousTestCase):
    def test_a_newer_schema_stops_the_start_with_one_line(self) -> None:
        from twisted.internet import reactor

        from tlsotp.database_checks import DatabaseUnusable
        from tlsotp.services.otp_authority import DATABASE_FILE, OTPAuthority, OTPPolicy

        data = Path(self.mktemp())
        data.mkdir()
        db = sqlite3.connect(data / DATABASE_FILE)
        db.execute(f"PRAGMA user_version = {store.SCHEMA_VERSION + 1}")
        db.close()
        authority = OTPAuthority(reactor, data, OTPPolicy())  # type: ignore[arg-type]
        with self.assertRaises(DatabaseUnusable) as caught:
            authority.worker.startService()
        self.assertIn("newer", str(caught.exception))
        self.assertNotIn("\n", str(caught.exception))
