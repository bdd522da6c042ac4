"""The TTP's store on a real PostgreSQL server: the SQLite store's own tests run again on it,
then what only a database server has (its schema, the CA binding, outages).

The twins subclass the unit tier's test cases (imported as modules, so trial does not collect the
SQLite originals twice) and give them a fresh database of the run's shared server.
"""

from __future__ import annotations

import datetime
import threading
from pathlib import Path

from cryptography import x509
from twisted.trial.unittest import SynchronousTestCase

import tests.unit.test_ttp_issuer as issuer_tests
import tests.unit.test_ttp_lineage as lineage_tests
import tests.unit.test_ttp_store as store_tests
from tests.postgres_cluster import new_cluster, shared_cluster
from tests.test_ttp_fixtures import TTPFixture, cached_key, enroll_request
from tlsotp.database_url import PostgresTarget, parse_database_url
from tlsotp.pki.keys import KeyType
from tlsotp.pki.roles import Role
from tlsotp.ttp import wire
from tlsotp.ttp.ca import CAError, TTPPaths, init_ca, load_ca, open_store
from tlsotp.ttp.postgres_store import RETRY_SECONDS, PostgresStore
from tlsotp.ttp.store import StoreError, StoreUnavailable
from tlsotp.ttp.wire import Refusal

NOW = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def fresh_database(testcase: SynchronousTestCase) -> PostgresTarget:
    return parse_database_url(shared_cluster(testcase).create_database("ttp"))


class PostgresTokenSpendTests(store_tests.TokenSpendTests):
    def database(self) -> PostgresTarget | None:
        return fresh_database(self)

    def assert_serial_is_a_key(self, serial: str) -> None:
        import psycopg

        with self.assertRaises(psycopg.errors.UniqueViolation):
            self.store._db.execute(
                "INSERT INTO certificates (serial, name, role, not_before, not_after, issued_at, der)"
                " VALUES (?, 'x', 'server', 0, 0, 0, '\\x00'::bytea)", (serial,)
            )


class PostgresRevocationTests(store_tests.RevocationTests):
    def database(self) -> PostgresTarget | None:
        return fresh_database(self)


class PostgresRenewalTests(issuer_tests.RenewalTests):
    def database(self) -> PostgresTarget | None:
        return fresh_database(self)


class PostgresCRLTests(issuer_tests.CRLTests):
    def database(self) -> PostgresTarget | None:
        return fresh_database(self)


class PostgresEnrollmentRetryTests(lineage_tests.EnrollmentRetryTests):
    def database(self) -> PostgresTarget | None:
        return fresh_database(self)


class PostgresRenewalRetryTests(lineage_tests.RenewalRetryTests):
    def database(self) -> PostgresTarget | None:
        return fresh_database(self)


class PostgresReuseDetectionTests(lineage_tests.ReuseDetectionTests):
    def database(self) -> PostgresTarget | None:
        return fresh_database(self)


class PostgresLineageRevocationTests(lineage_tests.LineageRevocationTests):
    def database(self) -> PostgresTarget | None:
        return fresh_database(self)


class PostgresMaxLineageTests(lineage_tests.MaxLineageTests):
    def database(self) -> PostgresTarget | None:
        return fresh_database(self)


class SchemaTests(SynchronousTestCase):
    def test_no_sqlite_file_and_the_ca_is_bound(self) -> None:
        target = fresh_database(self)
        data_dir = Path(self.mktemp())
        ca = init_ca(data_dir, database=target)
        self.assertFalse(TTPPaths(data_dir).db.exists())
        store = open_store(data_dir, target)
        self.addCleanup(store.close)
        assert isinstance(store, PostgresStore)
        self.assertEqual(store.ca_fingerprint(), ca.fingerprint)

    def test_another_ca_is_refused_in_one_line(self) -> None:
        target = fresh_database(self)
        first = Path(self.mktemp())
        init_ca(first, database=target)
        second = Path(self.mktemp())
        with self.assertRaises(CAError) as caught:
            init_ca(second, database=target)  # init on a database that belongs to a CA already
        self.assertIn("belongs to the CA", str(caught.exception))
        self.assertEqual(list(second.iterdir()), [])  # the new key and root were removed again
        init_ca(second)  # a CA of its own, on SQLite; its root does not match the database's
        with self.assertRaises(StoreError) as refused:
            open_store(second, target)
        message = str(refused.exception)
        self.assertIn("not to this data dir's CA", message)
        self.assertNotIn("\n", message)

    def test_a_database_without_a_ca_is_refused(self) -> None:
        target = fresh_database(self)
        data_dir = Path(self.mktemp())
        init_ca(data_dir)
        with self.assertRaises(StoreError) as caught:
            open_store(data_dir, target)
        self.assertIn("tlsotp ttp init --database", str(caught.exception))

    def test_a_newer_schema_is_refused_in_one_line(self) -> None:
        import psycopg

        target = fresh_database(self)
        data_dir = Path(self.mktemp())
        init_ca(data_dir, database=target)
        with psycopg.connect(target.conninfo(), autocommit=True) as connection:
            connection.execute("UPDATE tlsotp_ttp.meta SET value = 99 WHERE key = 'schema_version'")
        with self.assertRaises(StoreError) as caught:
            open_store(data_dir, target)
        self.assertIn("version 99, newer than", str(caught.exception))
        self.assertNotIn("\n", str(caught.exception))

    def test_processes_starting_at_once_make_the_schema_once(self) -> None:
        """Eight openers race on an empty database; the schema lock lets exactly one create it."""
        import psycopg

        target = fresh_database(self)
        data_dir = Path(self.mktemp())
        init_ca(data_dir)  # the CA's files; the database gets bound by the race below
        fingerprint = load_ca(data_dir).fingerprint
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def open_one() -> None:
            try:
                barrier.wait(timeout=10)
                PostgresStore.open_database(target, fingerprint, bind=True).close()
            except BaseException as exc:  # noqa: BLE001 - collected, asserted below
                errors.append(exc)

        threads = [threading.Thread(target=open_one) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        self.assertEqual(errors, [])
        with psycopg.connect(target.conninfo()) as connection:
            rows = connection.execute("SELECT key, value FROM tlsotp_ttp.meta ORDER BY key").fetchall()
        self.assertEqual(rows, [("crl_number", 0), ("revocation_generation", 0), ("schema_version", 3)])


class PostgresOutageTests(SynchronousTestCase):
    def test_stopped_server_refuses_then_the_store_recovers_by_itself(self) -> None:
        cluster = new_cluster(self)
        target = parse_database_url(cluster.create_database("ttp"))
        data_dir = Path(self.mktemp())
        ca = init_ca(data_dir, database=target)
        events: list[tuple[str, bool]] = []
        store = PostgresStore.open_database(target, ca.fingerprint, on_event=lambda line, trouble: events.append((line, trouble)))
        self.addCleanup(store.close)
        token = store.mint_token("bank.example", Role.SERVER, ttl=datetime.timedelta(hours=1), now=NOW)
        cluster.stop()
        refusals = []
        for _ in range(5):
            with self.assertRaises(StoreUnavailable) as caught:
                store.get_token(token.token_id)
            refusals.append(caught.exception)
        with self.assertRaises(StoreUnavailable):
            store.revoke(1, x509.ReasonFlags.unspecified, now=NOW)
        self.assertTrue(all(refusal.quiet for refusal in refusals))  # the outage was said once, below
        self.assertEqual([trouble for _, trouble in events], [True])
        self.assertIn("is unavailable", events[0][0])
        cluster.start()
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=RETRY_SECONDS * 10)
        record = None
        while record is None and datetime.datetime.now() < deadline:
            try:
                record = store.get_token(token.token_id)
            except StoreUnavailable:
                threading.Event().wait(0.1)
        self.assertIsNotNone(record)
        self.assertEqual([trouble for _, trouble in events], [True, False])
        self.assertIn("is back after", events[1][0])
        self.assertIn("requests were refused", events[1][0])

    def test_the_issuer_refuses_internal_error_while_the_server_is_down(self) -> None:
        cluster = new_cluster(self)
        target = parse_database_url(cluster.create_database("ttp"))
        ttp = TTPFixture(Path(self.mktemp()), database=target)
        self.addCleanup(ttp.close)
        token = ttp.token("bank.example", Role.SERVER)
        cluster.stop()
        key = cached_key(KeyType.EC_P256, "pg")
        outcome = ttp.issuer.handle(wire.encode(enroll_request(token, "bank.example", Role.SERVER, key)))
        assert isinstance(outcome.reply, wire.Refused), outcome.reply
        self.assertEqual(outcome.reply.code, Refusal.internal_error)
        self.assertIn("unavailable", outcome.reply.detail)
        self.assertNotIn("\n", outcome.summary)

    def test_restart_between_requests_costs_no_refusal(self) -> None:
        """A session found dead before a transaction began is replaced, and nothing is refused."""
        cluster = new_cluster(self)
        target = parse_database_url(cluster.create_database("ttp"))
        ttp = TTPFixture(Path(self.mktemp()), KeyType.EC_P256, database=target)
        self.addCleanup(ttp.close)
        token = ttp.token("bank.example", Role.SERVER)
        cluster.stop()
        cluster.start()
        outcome = ttp.issuer.handle(wire.encode(enroll_request(token, "bank.example", Role.SERVER, cached_key(KeyType.EC_P256, "pg"))))
        self.assertIsInstance(outcome.reply, wire.Issued)


class CutOffDecisionTests(SynchronousTestCase):
    def test_a_decision_cut_off_mid_transaction_leaves_the_token_unspent(self) -> None:
        """The TTP's session is killed after it recorded the enrollment and the certificate but
        before it spent the token: the server rolls all of it back, and a retry then succeeds."""
        import psycopg

        target = fresh_database(self)
        ttp = TTPFixture(Path(self.mktemp()), database=target)
        self.addCleanup(ttp.close)
        token = ttp.token("bank.example", Role.SERVER)
        key = cached_key(KeyType.EC_P256, "pg-cut")
        request = wire.encode(enroll_request(token, "bank.example", Role.SERVER, key))
        holder = psycopg.connect(target.conninfo())
        self.addCleanup(holder.close)
        # A share lock on the token's row: reads and foreign-key checks pass, an UPDATE waits. So
        # the TTP inserts the enrollment and the certificate, then waits to mark the token spent.
        holder.execute("SELECT 1 FROM tlsotp_ttp.tokens WHERE id = %s FOR SHARE", (token.token_id,))
        outcomes: list[object] = []
        worker = threading.Thread(target=lambda: outcomes.append(ttp.issuer.handle(request)))
        worker.start()
        waiting = "SELECT pid FROM pg_stat_activity WHERE application_name = 'tlsotp-ttp' AND wait_event_type = 'Lock'"
        pids: list[tuple[int]] = []
        for _ in range(200):  # bounded: 10 s
            pids = holder.execute(waiting).fetchall()
            if pids:
                break
            threading.Event().wait(0.05)
        self.assertEqual(len(pids), 1)
        with psycopg.connect(target.conninfo(), autocommit=True) as spy:  # the other rows are in, uncommitted
            self.assertEqual(spy.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", pids[0]).fetchone(),
                             ("UPDATE tokens SET spent_at = $1, spent_serial = $2 WHERE id = $3",))
        with psycopg.connect(target.conninfo(), autocommit=True) as killer:
            killer.execute("SELECT pg_terminate_backend(%s)", (pids[0][0],))
        worker.join(timeout=30)
        holder.rollback()
        outcome = outcomes[0]
        assert hasattr(outcome, "reply") and isinstance(outcome.reply, wire.Refused), outcome
        self.assertEqual(outcome.reply.code, Refusal.internal_error)
        store = ttp.open_store()
        self.addCleanup(store.close)
        record = store.get_token(token.token_id)
        assert record is not None
        self.assertIsNone(record.spent_at)
        self.assertEqual(store.list_certificates(), [])
        self.assertIsNone(store.get_enrollment(token.token_id))
        # The TTP reconnects (within its retry interval) and the same request now buys the certificate.
        for _ in range(100):
            again = ttp.issuer.handle(request)
            if isinstance(again.reply, wire.Issued):
                break
            threading.Event().wait(0.1)
        self.assertIsInstance(again.reply, wire.Issued)
        self.assertEqual(len(store.list_certificates()), 1)

    def test_init_with_an_unreachable_database_leaves_no_ca_behind(self) -> None:
        nowhere = Path(self.mktemp()).resolve()
        target = parse_database_url(f"postgresql://tlsotp@/ttp?host={nowhere}&port=1")
        data_dir = Path(self.mktemp())
        with self.assertRaises(CAError) as caught:
            init_ca(data_dir, database=target)
        self.assertIn("cannot connect to the TTP's database", str(caught.exception))
        self.assertNotIn("\n", str(caught.exception))
        self.assertEqual(list(data_dir.iterdir()), [])
