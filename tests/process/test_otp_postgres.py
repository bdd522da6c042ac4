"""The OTP rules on PostgreSQL: the SQLite store's whole rule suite (tests/unit/test_otp.py) run
again on a real PostgreSQL server, plus what only a shared database has: the schema's version and
migration lock, the pepper check, and the pair lock holding under concurrent connections.

In tests/process: the server is a subprocess (tests/postgres_cluster.py), which the unit tier forbids.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, TypeVar, cast
from urllib.parse import urlsplit

from hypothesis.stateful import run_state_machine_as_test
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial import unittest

import tests.unit.test_otp as sqlite_tests
from tests.postgres_cluster import new_cluster, shared_cluster
from tlsotp.alerts import Alert, AlertError
from tlsotp.database_url import PostgresTarget
from tlsotp.otp import postgres_store, store
from tlsotp.otp.messages import ConfirmStatus
from tlsotp.otp.postgres_store import QmarkCursor
from tlsotp.services.otp_authority import OTPPolicy
from tlsotp.services.postgres_otp import OTPStoreRefused, PostgresOTPAuthority
from tlsotp.services.postgres_pool import PostgresPool, StoreUnavailable

R = TypeVar("R")
PEPPER = sqlite_tests.PEPPER


def connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True)


class PostgresBackend:
    """The rules on PostgreSQL as the daemon runs them: each call one transaction, the pair's
    advisory lock first."""

    def __init__(self, url: str) -> None:
        self.connection = connect(url)
        with self.connection.transaction():
            postgres_store.create_schema(QmarkCursor(self.connection.cursor()), lambda initialising: PEPPER)

    def run(self, fn: Callable[..., R], **kwargs: Any) -> R:
        with self.connection.transaction():
            cursor = QmarkCursor(self.connection.cursor())
            if "client" in kwargs:
                postgres_store.lock_pair(cursor, str(kwargs["client"]), str(kwargs["transaction"]))
            return fn(cursor, **kwargs)

    def dump(self) -> str:
        rows = self.connection.execute("SELECT * FROM otps").fetchall()
        return repr(rows) + repr([bytes(v).hex() for row in rows for v in row if isinstance(v, bytes)])

    def reset(self) -> None:
        self.connection.execute("TRUNCATE otps")

    def close(self) -> None:
        self.connection.close()


class PostgresStoreTests(sqlite_tests.StoreTests):
    """Every rule test of the SQLite store, on PostgreSQL."""

    def make_backend(self) -> PostgresBackend:  # type: ignore[override]
        return PostgresBackend(shared_cluster(self).create_database())


class PostgresLockoutModelTests(unittest.SynchronousTestCase):
    def test_the_store_follows_the_lockout_rules(self) -> None:
        backend = PostgresBackend(shared_cluster(self).create_database())
        self.addCleanup(backend.close)

        def fresh() -> PostgresBackend:
            backend.reset()  # each example starts from an empty table
            return backend

        class Model(sqlite_tests.LockoutModel):
            make_backend = staticmethod(fresh)  # type: ignore[assignment]

            def teardown(self) -> None:
                pass  # the connection is the test's

        run_state_machine_as_test(Model)


class SchemaTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.url = shared_cluster(self).create_database()

    def create(self, pepper: bytes = PEPPER) -> bytes:
        connection = connect(self.url)
        try:
            with connection.transaction():
                return postgres_store.create_schema(QmarkCursor(connection.cursor()), lambda initialising: pepper)
        finally:
            connection.close()

    def test_a_new_database_is_made_at_the_current_version(self) -> None:
        self.create()
        self.create()  # a second start finds it current
        connection = connect(self.url)
        self.addCleanup(connection.close)
        rows = connection.execute("SELECT store, version FROM schema_version").fetchall()
        self.assertEqual(rows, [("otp", store.SCHEMA_VERSION)])

    def test_a_newer_schema_is_refused(self) -> None:
        self.create()
        connection = connect(self.url)
        self.addCleanup(connection.close)
        connection.execute("UPDATE schema_version SET version = 99 WHERE store = 'otp'")
        with self.assertRaises(store.SchemaError) as caught:
            self.create()
        self.assertIn("version 99 is newer", str(caught.exception))

    def test_another_pepper_is_refused(self) -> None:
        self.create(PEPPER)
        self.assertRaises(postgres_store.PepperMismatch, self.create, b"q" * 32)
        self.assertEqual(self.create(PEPPER), PEPPER)

    def test_servers_starting_at_once_do_not_race_the_schema(self) -> None:
        errors: list[BaseException] = []

        def start() -> None:
            try:
                self.create()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        self.assertEqual(errors, [])


class ConcurrentConnectionTests(unittest.SynchronousTestCase):
    """The pair lock across connections (as across servers): one code, many at once."""

    def test_one_code_confirmed_by_many_connections_at_once_is_accepted_once(self) -> None:
        url = shared_cluster(self).create_database()
        issuer = PostgresBackend(url)
        self.addCleanup(issuer.close)
        issued = issuer.run(
            store.issue, pepper=PEPPER, client="alice.example", transaction="Rs 5 to Bob", digits=6,
            ttl_seconds=60, now=1000,
        )
        backends = [PostgresBackend(url) for _ in range(12)]
        for backend in backends:
            self.addCleanup(backend.close)
        barrier = threading.Barrier(len(backends))
        results: list[object] = []

        def confirm(backend: PostgresBackend) -> None:
            barrier.wait(30)
            try:
                results.append(backend.run(
                    store.confirm, pepper=PEPPER, client="alice.example", transaction="Rs 5 to Bob",
                    code=issued.code, max_attempts=3, now=1001,
                ).status)
            except BaseException as exc:
                results.append(exc)

        threads = [threading.Thread(target=confirm, args=(backend,)) for backend in backends]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        self.assertEqual(sorted(str(r) for r in results),
                         sorted([str(ConfirmStatus.accepted)] + [str(ConfirmStatus.already_used)] * 11))

    def test_wrong_guesses_from_many_connections_at_once_lock_after_max_attempts(self) -> None:
        url = shared_cluster(self).create_database()
        issuer = PostgresBackend(url)
        self.addCleanup(issuer.close)
        issued = issuer.run(
            store.issue, pepper=PEPPER, client="alice.example", transaction="Rs 5 to Bob", digits=6,
            ttl_seconds=60, now=1000,
        )
        wrong = str((int(issued.code) + 1) % 10**6).zfill(6)
        backends = [PostgresBackend(url) for _ in range(8)]
        for backend in backends:
            self.addCleanup(backend.close)
        barrier = threading.Barrier(len(backends))
        results: list[object] = []

        def guess(backend: PostgresBackend) -> None:
            barrier.wait(30)
            results.append(backend.run(
                store.confirm, pepper=PEPPER, client="alice.example", transaction="Rs 5 to Bob",
                code=wrong, max_attempts=3, now=1001,
            ))

        threads = [threading.Thread(target=guess, args=(backend,)) for backend in backends]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        wrong_code = [r for r in results if r.status is ConfirmStatus.wrong_code]  # type: ignore[attr-defined]
        self.assertEqual(sorted(r.attempts_left for r in wrong_code), [1, 2])  # type: ignore[attr-defined]
        self.assertEqual(len(results), 8)
        # then the right code is too late
        self.assertEqual(issuer.run(
            store.confirm, pepper=PEPPER, client="alice.example", transaction="Rs 5 to Bob",
            code=issued.code, max_attempts=3, now=1002,
        ).status, ConfirmStatus.locked)


class AuthorityTests(unittest.TestCase):
    """``PostgresOTPAuthority``: the daemon's OTP store with --database, off the reactor thread."""

    def authority(self, url: str, pepper_file: Path, **policy: int) -> PostgresOTPAuthority:
        authority = PostgresOTPAuthority(reactor, PostgresTarget(url), pepper_file, OTPPolicy(**policy))  # type: ignore[arg-type]  # the global reactor provides IReactorFromThreads
        self.addCleanup(authority.close)
        return authority

    async def test_issued_by_one_confirmed_by_another(self) -> None:
        url = shared_cluster(self).create_database()
        first_pepper = Path(self.mktemp())
        second_pepper = Path(self.mktemp())
        a = self.authority(url, first_pepper, max_attempts=1)
        await a.open()
        second_pepper.write_bytes(first_pepper.read_bytes())
        b = self.authority(url, second_pepper, max_attempts=1)
        issued, _ = await a.issue("bob.example", "Rs 5 to Bob")
        self.assertEqual((await b.confirm("bob.example", "Rs 5 to Bob", issued.code)).status, ConfirmStatus.accepted)
        self.assertEqual((await a.confirm("bob.example", "Rs 5 to Bob", issued.code)).status, ConfirmStatus.already_used)
        other, _ = await b.issue("bob.example", "Rs 6 to Bob")
        wrong = str((int(other.code) + 1) % 10**6).zfill(6)
        self.assertEqual((await a.confirm("bob.example", "Rs 6 to Bob", wrong)).status, ConfirmStatus.locked)
        with self.assertRaises(AlertError) as caught:
            await b.issue("bob.example", "Rs 6 to Bob")
        self.assertEqual(caught.exception.alert, Alert.access_denied)

    async def test_a_second_server_without_the_pepper_or_with_another_refuses_to_start(self) -> None:
        url = shared_cluster(self).create_database()
        first_pepper = Path(self.mktemp())
        await self.authority(url, first_pepper).open()
        missing = Path(self.mktemp())
        with self.assertRaises(OTPStoreRefused) as caught:
            await self.authority(url, missing).open()
        self.assertIn(f"copy that server's pepper file to {missing}", str(caught.exception))
        self.assertFalse(missing.exists())
        other = Path(self.mktemp())
        other.write_bytes(b"x" * 32)
        with self.assertRaises(OTPStoreRefused) as caught:
            await self.authority(url, other).open()
        self.assertIn("not the one the database's codes were made with", str(caught.exception))


class PoolOutageTests(unittest.TestCase):
    """``PostgresPool`` on a PostgreSQL server of the test's own, stopped and started again."""

    async def test_an_outage_fails_calls_logs_once_and_recovers_without_a_restart(self) -> None:
        cluster = new_cluster(self)
        url = cluster.create_database()
        events: list[str] = []

        def observe(event: LogEvent) -> None:
            if event.get("log_namespace") == "tlsotp.services.postgres":
                events.append(formatEvent(event))

        observer = cast(ILogObserver, observe)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        pool = PostgresPool(reactor, url, url, size=3)  # type: ignore[arg-type]  # the global reactor provides IReactorFromThreads
        pool.startService()
        self.addCleanup(pool.stopService)

        def one(cursor: QmarkCursor) -> int:
            return int(cursor.execute("SELECT 1").fetchone()[0])

        self.assertEqual(await DeferredList([pool.run(one) for _ in range(6)], fireOnOneErrback=True, consumeErrors=True),
                         [(True, 1)] * 6)  # every thread holds a connection now
        await deferToThread(cluster.stop, "fast")
        for _ in range(5):
            with self.assertRaises(StoreUnavailable):
                await pool.run(one)
        self.assertFalse(pool.reachable)
        await deferToThread(cluster.start)
        # The dropped connections are remade: the first call after the restart succeeds.
        self.assertEqual(await pool.run(one), 1)
        self.assertTrue(pool.reachable)
        self.assertEqual(len([e for e in events if "database unreachable" in e]), 1, events)
        self.assertEqual(len([e for e in events if "database reachable again" in e]), 1, events)

    async def test_a_read_only_database_is_unavailable_until_a_new_connection_can_write(self) -> None:
        """As after a failover that left the URL on a demoted primary: the connection is dropped,
        and the next one, to a writable database, succeeds."""
        url = shared_cluster(self).create_database()
        name = urlsplit(url).path.lstrip("/")
        admin = connect(url)
        self.addCleanup(admin.close)
        admin.execute("CREATE TABLE t (x INTEGER)")
        admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        pool = PostgresPool(reactor, url, url, size=1)  # type: ignore[arg-type]  # the global reactor provides IReactorFromThreads
        pool.startService()
        self.addCleanup(pool.stopService)

        def write(cursor: QmarkCursor) -> None:
            cursor.execute("INSERT INTO t VALUES (1)")

        with self.assertRaises(StoreUnavailable) as caught:
            await pool.run(write)
        self.assertIn("is read-only", str(caught.exception))
        admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = off')
        await pool.run(write)
        self.assertEqual(admin.execute("SELECT count(*) FROM t").fetchone()[0], 1)
