"""The TTP's SQLite store: one file, atomic spends across connections, unique serials."""

from __future__ import annotations

import datetime
import os
import sqlite3
import stat
import threading
from pathlib import Path

from cryptography import x509
from twisted.trial import unittest

from tests.test_ttp_fixtures import cached_key
from tlsotp.database_url import PostgresTarget
from tlsotp.pki.builders import issue_certificate
from tlsotp.pki.keys import KeyType
from tlsotp.pki.roles import Role
from tlsotp.ttp.ca import CAError, TTPPaths, init_ca, load_ca, open_store
from tlsotp.ttp.store import (
    AlreadyRevoked,
    SerialInUse,
    Store,
    StoreError,
    TokenUnavailable,
    UnknownSerial,
    parse_serial,
    serial_text,
)
from tlsotp.ttp.tokens import Token

NOW = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


class StoreTestCase(unittest.SynchronousTestCase):
    def database(self) -> PostgresTarget | None:
        """The store these tests run on: the data dir's SQLite file (a PostgreSQL twin overrides it)."""
        return None

    def setUp(self) -> None:
        self.data_dir = Path(self.mktemp())
        self.target = self.database()
        self.ca = init_ca(self.data_dir, database=self.target)
        self.path = TTPPaths(self.data_dir).db
        self.store = self.open_store()
        self.addCleanup(self.store.close)

    def open_store(self) -> Store:
        """Another connection to the same store, as another process would open it."""
        return open_store(self.data_dir, self.target)

    def cert(self, name: str = "bank.example", serial: int | None = None, days: int = 7) -> x509.Certificate:
        return issue_certificate(
            self.ca.key, self.ca.root, cached_key(KeyType.EC_P256, "store").public_key(),
            name=name, role=Role.SERVER, days=days, now=NOW, serial=serial,
        )

    def token(self, ttl: datetime.timedelta = datetime.timedelta(hours=1)) -> Token:
        token = Token.generate()
        self.store.add_token(token.token_id, token.mac_key(), "bank.example", Role.SERVER, now=NOW, expires_at=NOW + ttl)
        return token


class FileTests(StoreTestCase):
    def test_one_private_file_in_wal_mode_with_full_sync(self) -> None:
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        connection = sqlite3.connect(self.path)
        self.addCleanup(connection.close)
        self.assertEqual(connection.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(self.store._db.execute("PRAGMA synchronous").fetchone()[0], 2)  # FULL

    def test_create_refuses_an_existing_file_and_open_a_missing_one(self) -> None:
        with self.assertRaises(FileExistsError):
            Store.create(self.path)
        with self.assertRaises(StoreError):
            Store.open(self.data_dir / "absent.sqlite3")
        junk = self.data_dir / "junk.sqlite3"
        junk.write_bytes(b"not a database at all, not at all" * 10)
        with self.assertRaises(StoreError):
            Store.open(junk)

    def test_init_refuses_to_overwrite_and_load_finds_problems(self) -> None:
        with self.assertRaises(CAError):
            init_ca(self.data_dir)
        with self.assertRaises(CAError):
            load_ca(self.data_dir / "nothing-here")
        with self.assertRaises(CAError):
            open_store(self.data_dir / "nothing-here")
        os.chmod(TTPPaths(self.data_dir).key, 0o644)
        with self.assertRaises(CAError) as caught:
            load_ca(self.data_dir)
        self.assertIn("chmod 600", str(caught.exception))

    def test_encrypted_ca_key(self) -> None:
        data_dir = Path(self.mktemp())
        init_ca(data_dir, passphrase=b"secret words")
        with self.assertRaises(CAError) as caught:
            load_ca(data_dir)
        self.assertIn("--passphrase-file", str(caught.exception))
        with self.assertRaises(CAError):
            load_ca(data_dir, b"wrong")
        self.assertEqual(load_ca(data_dir, b"secret words").root, load_ca(data_dir, b"secret words").root)


class TokenSpendTests(StoreTestCase):
    def test_spend_records_the_certificate_in_the_same_transaction(self) -> None:
        token = self.token()
        cert = self.cert()
        self.store.record_enrollment(token.token_id, cert, Role.SERVER, "bank.example", now=NOW)
        stored = self.store.get_token(token.token_id)
        assert stored is not None
        self.assertEqual(stored.spent_serial, cert.serial_number)
        with self.assertRaises(TokenUnavailable) as caught:
            self.store.record_enrollment(token.token_id, self.cert(), Role.SERVER, "bank.example", now=NOW)
        self.assertEqual(caught.exception.reason, "spent")
        self.assertEqual(len(self.store.list_certificates()), 1)  # the loser's insert was rolled back

    def test_expired_token_cannot_be_spent(self) -> None:
        token = self.token(datetime.timedelta(seconds=30))
        with self.assertRaises(TokenUnavailable) as caught:
            self.store.record_enrollment(token.token_id, self.cert(), Role.SERVER, "bank.example", now=NOW + datetime.timedelta(seconds=30))
        self.assertEqual(caught.exception.reason, "expired")
        self.assertEqual(self.store.list_certificates(), [])

    def test_concurrent_connections_spend_a_token_exactly_once(self) -> None:
        """Ten threads, each with its own connection (as separate processes would), race."""
        token = self.token()
        certs = [self.cert() for _ in range(10)]
        outcomes: list[str] = []
        barrier = threading.Barrier(len(certs))

        def spend(cert: x509.Certificate) -> None:
            store = self.open_store()
            try:
                barrier.wait(timeout=10)
                store.record_enrollment(token.token_id, cert, Role.SERVER, "bank.example", now=NOW)
                outcomes.append("issued")
            except TokenUnavailable as exc:
                outcomes.append(exc.reason)
            finally:
                store.close()

        threads = [threading.Thread(target=spend, args=(cert,)) for cert in certs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        self.assertEqual(sorted(outcomes), ["issued"] + ["spent"] * 9)
        self.assertEqual(len(self.store.list_certificates()), 1)

    def test_serials_are_never_reused(self) -> None:
        self.store.record_enrollment(self.token().token_id, self.cert(serial=0xABC), Role.SERVER, "bank.example", now=NOW)
        token = self.token()
        with self.assertRaises(SerialInUse):
            self.store.record_enrollment(token.token_id, self.cert(serial=0xABC), Role.SERVER, "bank.example", now=NOW)
        stored = self.store.get_token(token.token_id)
        assert stored is not None
        self.assertIsNone(stored.spent_at)  # nothing of the failed attempt was kept
        self.assert_serial_is_a_key("abc")

    def assert_serial_is_a_key(self, serial: str) -> None:
        """The database itself refuses a second row with one serial (not only the store's check)."""
        with self.assertRaises(sqlite3.IntegrityError):
            self.store._db.execute(
                "INSERT INTO certificates (serial, name, role, not_before, not_after, issued_at, der)"
                " VALUES (?, 'x', 'server', 0, 0, 0, x'00')", (serial,)
            )


class RevocationTests(StoreTestCase):
    def test_revoke_and_list_statuses(self) -> None:
        valid = self.cert()
        revoked = self.cert()
        expired = self.cert(days=1)
        for cert in (valid, revoked, expired):
            self.store.record_enrollment(self.token().token_id, cert, Role.SERVER, "bank.example", now=NOW)
        generation = self.store.revocation_generation()
        self.store.revoke(revoked.serial_number, x509.ReasonFlags.key_compromise, now=NOW)
        self.assertEqual(self.store.revocation_generation(), generation + 1)
        with self.assertRaises(AlreadyRevoked):
            self.store.revoke(revoked.serial_number, x509.ReasonFlags.superseded, now=NOW)
        with self.assertRaises(UnknownSerial):
            self.store.revoke(12345, x509.ReasonFlags.unspecified, now=NOW)
        later = NOW + datetime.timedelta(days=2)
        statuses = {r.serial: r.status(later) for r in self.store.list_certificates()}
        self.assertEqual(statuses[valid.serial_number], "valid")
        self.assertEqual(statuses[revoked.serial_number], "revoked (key_compromise)")
        self.assertEqual(statuses[expired.serial_number], "expired")
        self.assertEqual([r.serial for r in self.store.revocations()], [revoked.serial_number])

    def test_serial_spelling(self) -> None:
        self.assertEqual(serial_text(0x0ABC), "abc")
        for text in ("abc", "0xABC", "0a:bc", " 0abc "):
            self.assertEqual(parse_serial(text), 0xABC)
        for bad in ("", "xyz", "0x", "1" * 41):
            with self.assertRaises(ValueError):
                parse_serial(bad)
