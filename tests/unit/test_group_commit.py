"""Group commit on the OTP store's worker (issue 12): calls queued together commit in one
transaction, each answered only once its commit is durable on the file, and a call that fails
is rolled back alone."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests.test_ttp_fixtures import reactor
from tlsotp.database_checks import Cause, DatabaseUnusable
from tlsotp.services.sqlite_worker import LockWaits, SQLiteGroupWorker, WorkerNotRunning, commit_group, open_sqlite


def configure(connection: sqlite3.Connection) -> None:
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY)")
    connection.commit()


def insert(cursor: sqlite3.Cursor, n: int) -> int:
    cursor.execute("INSERT INTO t (n) VALUES (?)", (n,))
    return n


class Refused(Exception):
    pass


def insert_then_refuse(cursor: sqlite3.Cursor, n: int) -> int:
    cursor.execute("INSERT INTO t (n) VALUES (?)", (n,))
    raise Refused(f"no {n}")


class GroupCommitTests(unittest.TestCase):
    def setUp(self) -> None:
        self.path = Path(self.mktemp()).resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.worker = SQLiteGroupWorker(reactor, self.path, lambda: open_sqlite(self.path, configure), "test-db")
        self.worker.startService()
        self.addCleanup(self.worker.stopService)
        self.reader = sqlite3.connect(self.path)
        self.addCleanup(self.reader.close)

    def committed(self) -> set[int]:
        return {n for (n,) in self.reader.execute("SELECT n FROM t")}

    async def test_queued_calls_share_transactions_and_answer_after_their_commit(self) -> None:
        seen_at_answer: dict[int, bool] = {}

        def answered(n: int) -> int:
            # Read by another connection: only a committed row is visible there.
            seen_at_answer[n] = n in self.committed()
            return n

        first = self.worker.transact(insert, 0).addCallback(answered)
        await deferLater(reactor, 0, lambda: None)  # the next iteration: the first group is in flight
        self.assertEqual(self.worker.groups, 1)
        calls = [first, *(self.worker.transact(insert, n).addCallback(answered) for n in range(1, 100))]
        self.assertEqual(await gatherResults(calls), list(range(100)))
        self.assertEqual(seen_at_answer, {n: True for n in range(100)})
        self.assertEqual(self.committed(), set(range(100)))
        # The first went alone; the 99 queued while it committed share one transaction.
        self.assertEqual(self.worker.groups, 2)

    async def test_calls_made_in_one_reactor_iteration_share_one_transaction(self) -> None:
        """An idle worker waits for the end of the iteration before it starts a group, so calls
        made by the connections handled in the same iteration are committed together."""
        calls = [self.worker.transact(insert, n) for n in range(10)]
        self.assertEqual(self.worker.groups, 0)  # nothing started yet: the iteration is not over
        self.assertEqual(await gatherResults(calls), list(range(10)))
        self.assertEqual(self.worker.groups, 1)
        self.assertEqual(await self.worker.transact(insert, 10), 10)  # idle again: a group of its own
        self.assertEqual(self.worker.groups, 2)

    async def test_a_failing_call_is_rolled_back_alone(self) -> None:
        calls: list[Deferred[Any]] = [
            self.worker.transact(insert, 1),
            self.worker.transact(insert_then_refuse, 2),
            self.worker.transact(insert, 1),  # the primary key again: an SQLite error, this call only
            self.worker.transact(insert, 3),
        ]
        self.assertEqual(await calls[0], 1)
        with self.assertRaises(Refused):
            await calls[1]
        with self.assertRaises(Exception) as duplicate:
            await calls[2]
        self.assertIn("UNIQUE", str(duplicate.exception))
        self.assertEqual(await calls[3], 3)
        self.assertEqual(self.committed(), {1, 3})
        self.assertEqual(self.worker.groups, 1)  # all four in one transaction, each in its savepoint

    async def test_stop_commits_what_is_queued_then_refuses(self) -> None:
        calls = [self.worker.transact(insert, n) for n in range(10)]
        stopped = self.worker.stopService()
        refused = self.worker.transact(insert, 99)
        with self.assertRaises(WorkerNotRunning):
            await refused
        await stopped
        self.assertEqual(await gatherResults(calls), list(range(10)))
        self.assertEqual(self.committed(), set(range(10)))


def insert_blob(cursor: sqlite3.Cursor, size: int) -> int:
    cursor.execute("CREATE TABLE IF NOT EXISTS blobs (b BLOB)")
    cursor.execute("INSERT INTO blobs (b) VALUES (zeroblob(?))", (size,))
    return size


class WholeGroupRolledBackTests(unittest.SynchronousTestCase):
    def test_a_group_sqlite_rolls_back_on_its_own_fails_every_call_with_the_real_cause(self) -> None:
        # A full database: SQLite answers SQLITE_FULL and rolls the whole transaction back, so the
        # calls before it are gone too. Every call must fail, with that cause (not the "no such
        # savepoint" of undoing the failed call alone), and nothing may be kept.
        path = Path(self.mktemp()).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = open_sqlite(path, configure)
        self.addCleanup(connection.close)
        commit_group(connection, path, [(insert_blob, (10,), {})])  # the table exists, committed
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        connection.execute(f"PRAGMA max_page_count = {pages + 1}")
        outcomes = commit_group(connection, path, [(insert, (1,), {}), (insert_blob, (200_000,), {}), (insert, (2,), {})])
        self.assertEqual([ok for ok, _ in outcomes], [False, False, False])
        for _, error in outcomes:
            self.assertIsInstance(error, DatabaseUnusable)
            self.assertIs(error.cause, Cause.disk_full)
        self.assertFalse(connection.in_transaction)
        self.assertEqual(connection.execute("SELECT count(*) FROM t").fetchone()[0], 0)
        connection.execute("PRAGMA max_page_count = 1073741823")
        self.assertEqual(commit_group(connection, path, [(insert, (3,), {})]), [(True, 3)])


class LockWaitTests(unittest.TestCase):
    """``LockWaits``: every group transaction is counted, and one that had to wait for another
    connection's write lock (another process, for the daemon) is counted as a wait."""

    def setUp(self) -> None:
        self.path = Path(self.mktemp()).resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.connection = open_sqlite(self.path, configure)
        self.addCleanup(self.connection.close)

    def test_every_group_transaction_is_counted(self) -> None:
        # (Whether one alone counts as a wait is timing: a busy machine may pause any thread
        # for a millisecond. The figure is read in benchmarks, beside one process alone.)
        waits = LockWaits()
        for n in range(5):
            commit_group(self.connection, self.path, [(insert, (n,), {})], waits)
        self.assertEqual(waits.transactions, 5)

    def test_a_lock_held_by_another_connection_is_a_wait_and_is_said(self) -> None:
        holder = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.addCleanup(holder.close)
        holder.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.05, holder.execute, ("COMMIT",))
        release.start()
        self.addCleanup(release.join)
        waits = LockWaits()
        outcomes = commit_group(self.connection, self.path, [(insert, (1,), {})], waits)
        self.assertEqual(outcomes, [(True, 1)])
        self.assertEqual((waits.transactions, waits.waited), (1, 1))
        self.assertGreaterEqual(waits.waited_seconds, 0.04)
        self.assertRegex(waits.summary(), r"^1 of 1 group transactions waited over 1 ms for the write lock \(\d+ ms in all\)$")

    async def test_the_worker_counts_its_groups(self) -> None:
        worker = SQLiteGroupWorker(reactor, self.path, lambda: open_sqlite(self.path, configure), "test-db")
        worker.startService()
        await gatherResults([worker.transact(insert, n) for n in range(10, 13)])
        await worker.stopService()
        self.assertEqual(worker.lock_waits.transactions, worker.groups)
