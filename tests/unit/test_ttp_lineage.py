"""Enrollment lineage at the TTP: revocation follows renewal, key reuse is caught, lineages end,
and a request whose reply was lost can be sent again without costing a token.

Plain code over the Issuer and a real SQLite file (no network); the TTP's clock is a FakeClock.
"""

from __future__ import annotations

import datetime
import secrets
import sqlite3
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import SynchronousTestCase

from tests.test_ttp_fixtures import TTPFixture, cached_key, csr_der, enroll_request
from tlsotp.database_url import PostgresTarget
from tlsotp.pki.builders import build_root, issue_certificate
from tlsotp.pki.keys import KeyType, PrivateKey
from tlsotp.pki.roles import Role
from tlsotp.ttp import wire
from tlsotp.ttp.issuer import DEFAULT_MAX_LINEAGE
from tlsotp.ttp.renewal_proof import sign_renewal
from tlsotp.ttp.store import SCHEMA_VERSION, AlreadyRevoked, Store, StoreError, serial_text
from tlsotp.ttp.tokens import Token
from tlsotp.ttp.wire import Refusal

DER = serialization.Encoding.DER
NAME = "alice.example"

# The schema exactly as version 1 shipped (copied from tlsotp/ttp/store.py before the lineage
# change), so that the migration test starts from a real version 1 file.
SCHEMA_V1_AS_SHIPPED = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    mac_key BLOB NOT NULL,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('server', 'client')),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    spent_at INTEGER,
    spent_serial TEXT REFERENCES certificates (serial)
);
CREATE TABLE certificates (
    serial TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('server', 'client')),
    not_before INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    issued_at INTEGER NOT NULL,
    der BLOB NOT NULL,
    token_id TEXT REFERENCES tokens (id),
    renewed_from TEXT REFERENCES certificates (serial),
    superseded_by TEXT UNIQUE REFERENCES certificates (serial)
);
CREATE TABLE revocations (
    serial TEXT PRIMARY KEY REFERENCES certificates (serial),
    revoked_at INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE crl (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    number INTEGER NOT NULL,
    der BLOB NOT NULL,
    built_at INTEGER NOT NULL,
    generation INTEGER NOT NULL
);
INSERT INTO meta (key, value) VALUES ('schema_version', 1), ('crl_number', 0), ('revocation_generation', 0);
"""


class LineageTestCase(SynchronousTestCase):
    def database(self) -> PostgresTarget | None:
        """The store these tests run on: the data dir's SQLite file (a PostgreSQL twin overrides it)."""
        return None

    def setUp(self) -> None:
        self.ttp = TTPFixture(Path(self.mktemp()), database=self.database())
        self.addCleanup(self.ttp.close)
        self.key = cached_key(KeyType.EC_P256, "lineage-owner")
        self.summaries: list[str] = []

    def handle(self, request: wire.Request) -> wire.Reply:
        outcome = self.ttp.issuer.handle(wire.encode(request))
        self.assertNotIn("\n", outcome.summary)
        self.summaries.append(outcome.summary)
        return outcome.reply

    def issued(self, request: wire.Request) -> x509.Certificate:
        reply = self.handle(request)
        assert isinstance(reply, wire.Issued), reply
        return x509.load_der_x509_certificate(reply.cert_der)

    def refused(self, code: Refusal, request: wire.Request) -> str:
        reply = self.handle(request)
        assert isinstance(reply, wire.Refused), reply
        self.assertEqual(reply.code, code, reply.detail)
        return reply.detail

    def enroll(self, key: PrivateKey | None = None) -> tuple[Token, x509.Certificate]:
        token = self.ttp.token(NAME, Role.CLIENT)
        return token, self.issued(enroll_request(token, NAME, Role.CLIENT, key or self.key))

    def renewal(self, cert: x509.Certificate, key: PrivateKey, new_key: PrivateKey | None = None) -> wire.RenewRequest:
        cert_der = cert.public_bytes(DER)
        csr = csr_der(new_key or key, NAME)
        nonce = secrets.token_bytes(wire.NONCE_BYTES)
        timestamp = int(self.ttp.clock.now.timestamp())
        return wire.RenewRequest(cert_der, csr, nonce, timestamp, sign_renewal(key, cert_der, csr, nonce, timestamp))

    def count(self) -> int:
        return len(self.ttp.store.list_certificates())

    def revoked_serials(self) -> set[int]:
        return {revocation.serial for revocation in self.ttp.store.revocations()}

    def crl_serials(self) -> set[int]:
        reply = self.handle(wire.CRLRequest())
        assert isinstance(reply, wire.CRLReply)
        return {entry.serial_number for entry in x509.load_der_x509_crl(reply.crl_der)}


class EnrollmentRetryTests(LineageTestCase):
    def test_same_token_and_key_gets_the_same_certificate_again(self) -> None:
        token, first = self.enroll()
        again = self.issued(enroll_request(token, NAME, Role.CLIENT, self.key))  # fresh nonce, fresh CSR
        self.assertEqual(again, first)
        self.assertEqual(self.count(), 1)
        self.assertIn("re-sent serial", self.summaries[-1])

    def test_a_retry_after_the_token_expired_still_gets_it(self) -> None:
        token = self.ttp.token(NAME, Role.CLIENT, ttl=datetime.timedelta(minutes=5))
        first = self.issued(enroll_request(token, NAME, Role.CLIENT, self.key))
        self.ttp.clock.advance(minutes=10)
        self.assertEqual(self.issued(enroll_request(token, NAME, Role.CLIENT, self.key)), first)

    def test_another_key_is_still_token_spent(self) -> None:
        token, _ = self.enroll()
        other = cached_key(KeyType.EC_P256, "lineage-other")
        self.refused(Refusal.token_spent, enroll_request(token, NAME, Role.CLIENT, other))
        self.assertEqual(self.count(), 1)

    def test_no_retry_once_the_certificate_was_renewed_or_revoked(self) -> None:
        token, first = self.enroll()
        self.issued(self.renewal(first, self.key))
        self.refused(Refusal.token_spent, enroll_request(token, NAME, Role.CLIENT, self.key))
        token, second = self.enroll()
        self.ttp.store.revoke(second.serial_number, x509.ReasonFlags.unspecified, now=self.ttp.clock.now)
        self.refused(Refusal.token_spent, enroll_request(token, NAME, Role.CLIENT, self.key))


class RenewalRetryTests(LineageTestCase):
    def test_same_renewal_again_gets_the_same_successor(self) -> None:
        _, first = self.enroll()
        request = self.renewal(first, self.key)
        successor = self.issued(request)
        self.assertEqual(self.issued(request), successor)  # the very same bytes
        self.assertEqual(self.issued(self.renewal(first, self.key)), successor)  # rebuilt, as a re-run does
        self.assertEqual(self.count(), 2)
        self.assertEqual(self.revoked_serials(), set())
        self.assertIn("re-sent serial", self.summaries[-1])

    def test_same_renewal_with_a_new_key_again(self) -> None:
        _, first = self.enroll()
        new_key = cached_key(KeyType.EC_P384, "lineage-new")
        successor = self.issued(self.renewal(first, self.key, new_key))
        self.assertEqual(self.issued(self.renewal(first, self.key, new_key)), successor)
        self.assertEqual(self.count(), 2)
        # And the lineage goes on from the successor.
        self.issued(self.renewal(successor, new_key))


class ReuseDetectionTests(LineageTestCase):
    def test_superseded_certificate_with_another_key_revokes_the_lineage(self) -> None:
        token, first = self.enroll()
        thief_key = cached_key(KeyType.EC_P256, "lineage-thief")
        stolen = self.issued(self.renewal(first, self.key, thief_key))  # the thief renews first
        detail = self.refused(Refusal.not_renewable, self.renewal(first, self.key))  # then the owner
        self.assertIn(token.token_id, detail)
        warning = self.summaries[-1]
        self.assertIn("KEY REUSE", warning)
        self.assertIn(token.token_id, warning)
        self.assertNotIn(str(token).split(".")[1], warning)  # never the secret
        self.assertIn(serial_text(stolen.serial_number), warning)
        self.assertEqual(self.revoked_serials(), {first.serial_number, stolen.serial_number})
        self.assertEqual(self.crl_serials(), {first.serial_number, stolen.serial_number})
        reasons = {r.reason for r in self.ttp.store.revocations()}
        self.assertEqual(reasons, {x509.ReasonFlags.key_compromise})
        enrollment = self.ttp.store.get_enrollment(token.token_id)
        assert enrollment is not None
        self.assertEqual(enrollment.revocation_reason, x509.ReasonFlags.key_compromise)
        # Neither holder gets anything more: not by renewing, not by retrying the thief's renewal.
        self.refused(Refusal.not_renewable, self.renewal(stolen, thief_key))
        self.refused(Refusal.not_renewable, self.renewal(first, self.key, thief_key))
        self.assertEqual(self.count(), 2)

    def test_two_generations_back_is_reuse_even_with_the_same_key(self) -> None:
        _, first = self.enroll()
        second = self.issued(self.renewal(first, self.key))
        third = self.issued(self.renewal(second, self.key))
        self.refused(Refusal.not_renewable, self.renewal(first, self.key))
        self.assertEqual(self.revoked_serials(), {first.serial_number, second.serial_number, third.serial_number})
        self.assertEqual(sum("KEY REUSE" in s for s in self.summaries), 1)

    def test_a_broken_csr_on_a_superseded_certificate_is_reuse_too(self) -> None:
        _, first = self.enroll()
        successor = self.issued(self.renewal(first, self.key))
        cert_der = first.public_bytes(DER)
        nonce, timestamp = secrets.token_bytes(wire.NONCE_BYTES), int(self.ttp.clock.now.timestamp())
        garbage = b"not a csr"
        self.refused(Refusal.not_renewable, wire.RenewRequest(
            cert_der, garbage, nonce, timestamp, sign_renewal(self.key, cert_der, garbage, nonce, timestamp)))
        self.assertIn(successor.serial_number, self.revoked_serials())

    def test_other_enrollments_are_untouched(self) -> None:
        _, bystander = self.enroll(cached_key(KeyType.EC_P256, "lineage-bystander"))
        _, first = self.enroll()
        self.issued(self.renewal(first, self.key, cached_key(KeyType.EC_P256, "lineage-thief")))
        self.refused(Refusal.not_renewable, self.renewal(first, self.key))
        self.assertNotIn(bystander.serial_number, self.revoked_serials())
        self.issued(self.renewal(bystander, cached_key(KeyType.EC_P256, "lineage-bystander")))


class LineageRevocationTests(LineageTestCase):
    def test_revoking_any_serial_revokes_every_live_certificate_of_the_enrollment(self) -> None:
        self.ttp.issuer.cert_days = 1
        token, first = self.enroll()
        self.ttp.clock.advance(hours=12)
        second = self.issued(self.renewal(first, self.key))
        self.ttp.clock.advance(hours=13)  # first has expired now; second is valid
        third = self.issued(self.renewal(second, self.key))
        revocation = self.ttp.store.revoke(first.serial_number, x509.ReasonFlags.key_compromise, now=self.ttp.clock.now)
        self.assertEqual(revocation.enrollment, token.token_id)
        # The serial named (expired or not) and the lineage's unexpired ones.
        self.assertEqual(set(revocation.serials), {first.serial_number, second.serial_number, third.serial_number})
        self.assertEqual(self.crl_serials(), {first.serial_number, second.serial_number, third.serial_number})
        detail = self.refused(Refusal.not_renewable, self.renewal(third, self.key))
        self.assertIn(f"enrollment {token.token_id}", detail)
        with self.assertRaises(AlreadyRevoked):
            self.ttp.store.revoke(third.serial_number, x509.ReasonFlags.key_compromise, now=self.ttp.clock.now)

    def test_expired_members_are_left_out_of_the_crl(self) -> None:
        self.ttp.issuer.cert_days = 1
        _, first = self.enroll()
        self.ttp.clock.advance(hours=12)
        second = self.issued(self.renewal(first, self.key))
        self.ttp.clock.advance(hours=13)
        revocation = self.ttp.store.revoke(second.serial_number, x509.ReasonFlags.unspecified, now=self.ttp.clock.now)
        self.assertEqual(revocation.serials, [second.serial_number])

    def test_list_shows_the_enrollment_of_each_certificate(self) -> None:
        token, first = self.enroll()
        second = self.issued(self.renewal(first, self.key))
        records = {r.serial: r for r in self.ttp.store.list_certificates()}
        self.assertEqual(records[first.serial_number].enrollment, token.token_id)
        self.assertEqual(records[second.serial_number].enrollment, token.token_id)


class MaxLineageTests(LineageTestCase):
    def test_default_is_ninety_days(self) -> None:
        self.assertEqual(self.ttp.issuer.max_lineage, datetime.timedelta(days=90))
        self.assertEqual(DEFAULT_MAX_LINEAGE, datetime.timedelta(days=90))

    def test_renewal_ends_at_the_lineage_cap_and_no_certificate_outlives_it(self) -> None:
        self.ttp.issuer.max_lineage = datetime.timedelta(days=10)
        start = self.ttp.clock.now
        _, first = self.enroll()
        self.assertEqual(first.not_valid_after_utc, start + datetime.timedelta(days=7))
        self.ttp.clock.advance(days=6)
        second = self.issued(self.renewal(first, self.key))
        self.assertEqual(second.not_valid_after_utc, start + datetime.timedelta(days=10))  # capped
        self.ttp.clock.advance(days=4)
        detail = self.refused(Refusal.not_renewable, self.renewal(second, self.key))
        self.assertIn("a new token is needed", detail)
        self.assertEqual(self.revoked_serials(), set())  # nothing revoked: the lineage just ended

    def test_a_short_cap_also_caps_the_first_certificate(self) -> None:
        self.ttp.issuer.max_lineage = datetime.timedelta(hours=12)
        start = self.ttp.clock.now
        _, first = self.enroll()
        self.assertEqual(first.not_valid_after_utc, start + datetime.timedelta(hours=12))


class MigrationTests(SynchronousTestCase):
    """A version 1 database, made with the version 1 schema, is migrated on open."""

    def make_v1(self) -> tuple[Path, dict[str, int]]:
        base = Path(self.mktemp())
        base.mkdir()
        path = base / "ttp.sqlite3"
        key = cached_key(KeyType.EC_P256, "migration-ca")
        now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        root = build_root(key, "v1 root", days=30, now=now)
        party = cached_key(KeyType.EC_P256, "migration-party").public_key()

        def cert(days: int = 7) -> x509.Certificate:
            return issue_certificate(key, root, party, name=NAME, role=Role.CLIENT, days=days, now=now)

        db = sqlite3.connect(path)
        db.executescript(SCHEMA_V1_AS_SHIPPED)
        t = int(now.timestamp())
        serials: dict[str, int] = {}
        certs = {"a0": cert(), "a1": cert(), "b0": cert(), "c0": cert(), "c1": cert(days=1)}
        for label, c in certs.items():
            serials[label] = c.serial_number
        rows = [("a0", "tokA", None), ("a1", None, "a0"), ("b0", "tokB", None), ("c0", "tokC", None), ("c1", None, "c0")]
        for token in ("tokA", "tokB", "tokC"):
            db.execute("INSERT INTO tokens (id, mac_key, name, role, created_at, expires_at) VALUES (?, x'00', ?, 'client', ?, ?)",
                       (token, NAME, t, t + 3600))
        for label, token, parent in rows:  # type: ignore[assignment]
            c = certs[label]
            db.execute(
                "INSERT INTO certificates (serial, name, role, not_before, not_after, issued_at, der, token_id, renewed_from)"
                " VALUES (?, ?, 'client', ?, ?, ?, ?, ?, ?)",
                (serial_text(c.serial_number), NAME, int(c.not_valid_before_utc.timestamp()),
                 int(c.not_valid_after_utc.timestamp()), t, c.public_bytes(DER), token,
                 None if parent is None else serial_text(serials[parent])),
            )
            if token is not None:
                db.execute("UPDATE tokens SET spent_at = ?, spent_serial = ? WHERE id = ?", (t, serial_text(c.serial_number), token))
            if parent is not None:
                db.execute("UPDATE certificates SET superseded_by = ? WHERE serial = ?",
                           (serial_text(c.serial_number), serial_text(serials[parent])))
        # Version 1 revoked one serial only: the superseded a0, leaving its successor a1 valid.
        db.execute("INSERT INTO revocations (serial, revoked_at, reason) VALUES (?, ?, 'keyCompromise')", (serial_text(serials["a0"]), t))
        db.execute("UPDATE meta SET value = 1 WHERE key = 'revocation_generation'")
        db.commit()
        db.close()
        return path, serials

    def test_v1_file_is_migrated_with_lineages(self) -> None:
        path, serials = self.make_v1()
        store = Store.open(path)
        self.addCleanup(store.close)
        self.assertEqual(store._meta("schema_version"), SCHEMA_VERSION)
        records = {r.serial: r for r in store.list_certificates()}
        self.assertEqual(records[serials["a1"]].enrollment, "tokA")
        self.assertEqual(records[serials["b0"]].enrollment, "tokB")
        self.assertEqual(records[serials["c1"]].enrollment, "tokC")
        # The old single-serial revocation now covers its lineage: a1 is revoked too.
        self.assertEqual({r.serial for r in store.revocations()}, {serials["a0"], serials["a1"]})
        self.assertEqual(store.revocation_generation(), 2)
        enrollment = store.get_enrollment("tokA")
        assert enrollment is not None and enrollment.revoked_at is not None
        other = store.get_enrollment("tokB")
        assert other is not None and other.revoked_at is None
        # Opening again changes nothing more.
        store.close()
        store = Store.open(path)
        self.assertEqual(store.revocation_generation(), 2)

    def test_a_failed_migration_changes_nothing(self) -> None:
        """The migration's last schema step fails: the steps before it are rolled back too."""
        path, _ = self.make_v1()
        db = sqlite3.connect(path)
        db.execute("CREATE INDEX certificates_by_enrollment ON tokens (name)")  # the name the migration needs
        db.commit()
        db.close()
        with self.assertRaises(StoreError) as caught:
            Store.open(path)
        self.assertIn("cannot upgrade", str(caught.exception))
        db = sqlite3.connect(path)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0], 1)
        self.assertIsNone(db.execute("SELECT 1 FROM sqlite_master WHERE name = 'enrollments'").fetchone())
        columns = [row[1] for row in db.execute("PRAGMA table_info(certificates)")]
        self.assertNotIn("enrollment", columns)
        self.assertEqual(db.execute("SELECT count(*) FROM revocations").fetchone()[0], 1)

    def test_a_newer_schema_is_refused(self) -> None:
        path, _ = self.make_v1()
        db = sqlite3.connect(path)
        db.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
        db.commit()
        db.close()
        with self.assertRaises(StoreError):
            Store.open(path)
