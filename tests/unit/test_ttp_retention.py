"""TTP retention (issue 9): old tokens are pruned, certificates (the audit record) are kept.

An expired or withdrawn token, referenced by nothing, is deleted once past the retention; a
spent one keeps its row (the lineage's name) and loses only its MAC key, and only once the
certificate it bought is no longer current, so a lost reply's retry still works until then.
The TTP service prunes at start and on a timer, on its worker, and stops the timer first."""

from __future__ import annotations

import datetime
import sqlite3
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.test_ttp_fixtures import enroll_request, make_ttp, start_ttp
from tests.unit.test_ttp_issuer import IssuerTestCase
from tlsotp.pki.roles import Role
from tlsotp.ttp.ca import TTPPaths
from tlsotp.ttp.issuer import Issuer
from tlsotp.ttp.store import Store, TokenPrune
from tlsotp.ttp.wire import Refusal

DAY = datetime.timedelta(days=1)
RETENTION = 30 * DAY


class StorePruneTests(IssuerTestCase):
    def prune(self) -> TokenPrune:
        return self.ttp.issuer.prune_tokens(RETENTION)

    def assertIntact(self) -> None:
        assert self.ttp.store.path is not None
        db = sqlite3.connect(self.ttp.store.path)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("PRAGMA foreign_key_check").fetchall(), [])

    def test_expired_and_withdrawn_tokens_go_after_the_retention_outstanding_ones_stay(self) -> None:
        expired = self.ttp.token("old.example", Role.CLIENT, ttl=DAY)
        withdrawn = self.ttp.token("gone.example", Role.CLIENT, ttl=20 * DAY)
        self.ttp.store.withdraw_token(withdrawn.token_id, now=self.ttp.clock.now)
        self.ttp.clock.advance(days=30)
        outstanding = self.ttp.token("new.example", Role.CLIENT, ttl=DAY)
        self.assertEqual(self.prune(), TokenPrune(0, 0))  # withdrawn 30 d ago, expired 29 d ago: not yet
        self.ttp.clock.advance(days=1, seconds=1)
        self.assertEqual(self.prune(), TokenPrune(2, 0))
        self.assertIsNone(self.ttp.store.get_token(expired.token_id))
        self.assertIsNone(self.ttp.store.get_token(withdrawn.token_id))
        self.assertIsNotNone(self.ttp.store.get_token(outstanding.token_id))
        # Enrolling with a pruned token is a typed refusal, as for any unknown token.
        self.assertRefused(Refusal.unknown_token, enroll_request(expired, "old.example", Role.CLIENT, self.key))
        self.assertEqual(self.prune(), TokenPrune(0, 0))
        self.assertIntact()

    def test_a_spent_token_keeps_its_lineage_and_its_retry_until_its_certificate_is_not_current(self) -> None:
        self.ttp.issuer.cert_days = 60  # outlives the retention
        token = self.ttp.token("bank.example", Role.SERVER)
        request = enroll_request(token, "bank.example", Role.SERVER, self.key)
        cert = self.issued(request)
        listing = self.ttp.store.list_certificates()
        self.ttp.clock.advance(days=45)
        self.assertEqual(self.prune(), TokenPrune(0, 0))  # spent 45 d ago, but its certificate is current
        self.assertEqual(self.issued(enroll_request(token, "bank.example", Role.SERVER, self.key)).serial_number,
                         cert.serial_number)  # a lost reply's retry still gets it
        self.ttp.clock.advance(days=16)  # the certificate has expired
        self.assertEqual(self.prune(), TokenPrune(0, 1))
        record = self.ttp.store.get_token(token.token_id)
        assert record is not None
        self.assertTrue(record.pruned)
        self.assertEqual((record.name, record.role, record.spent_serial), ("bank.example", Role.SERVER, cert.serial_number))
        self.assertEqual(self.ttp.store.list_certificates(), listing)  # the audit record is whole
        self.assertIsNotNone(self.ttp.store.get_enrollment(token.token_id))
        self.assertRefused(Refusal.unknown_token, request)
        self.assertEqual(self.prune(), TokenPrune(0, 0))
        self.assertIntact()

    def test_a_spent_token_whose_certificate_was_renewed_or_revoked_is_erased_after_the_retention(self) -> None:
        self.ttp.issuer.cert_days = 60
        renewed_token = self.ttp.token("bank.example", Role.SERVER)
        renewed = self.issued(enroll_request(renewed_token, "bank.example", Role.SERVER, self.key))
        self.issued(self.renew_request(renewed, self.key))
        revoked_token = self.ttp.token("alice.example", Role.CLIENT)
        revoked = self.issued(enroll_request(revoked_token, "alice.example", Role.CLIENT, self.key))
        self.ttp.store.revoke(revoked.serial_number, x509.ReasonFlags.key_compromise, now=self.ttp.clock.now)
        self.ttp.clock.advance(days=29)
        self.assertEqual(self.prune(), TokenPrune(0, 0))
        self.ttp.clock.advance(days=2)
        self.assertEqual(self.prune(), TokenPrune(0, 2))
        self.assertEqual(len(self.ttp.store.list_certificates()), 3)
        self.assertEqual(len(self.ttp.store.revocations()), 1)
        self.assertIntact()


class ServicePruneTests(unittest.TestCase):
    def setUp(self) -> None:
        self.data_dir = Path(self.mktemp())
        make_ttp(self.data_dir)
        store = Store.open(TTPPaths(self.data_dir).db)
        long_ago = datetime.datetime.now(datetime.timezone.utc) - 40 * DAY
        store.add_token("oldtoken", b"k" * 32, "old.example", Role.CLIENT, now=long_ago, expires_at=long_ago + DAY)
        store.add_token("recent", b"k" * 32, "new.example", Role.CLIENT, now=long_ago, expires_at=long_ago + 20 * DAY)
        store.close()
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    async def test_the_service_prunes_at_start_on_its_worker_and_stops_the_timer_first(self) -> None:
        service, _ = start_ttp(self, self.data_dir, token_retention=25 * DAY)
        self.assertTrue(service.pruning.running)

        def tokens(issuer: Issuer) -> list[Any]:
            return [issuer.store.get_token("oldtoken"), issuer.store.get_token("recent")]

        old, recent = await service.worker.run(tokens)  # queued after the first prune: it has run
        self.assertIsNone(old)
        self.assertIsNotNone(recent)
        self.assertIn("tlsotp-ttp: pruned tokens older than 25d: 1 expired or withdrawn deleted, 0 spent ones' MAC keys erased",
                      [formatEvent(e) for e in self.events])
        # A prune queued just before the stop finishes before the store closes; one asked for
        # after the stop is dropped without a word.
        queued = Deferred.fromCoroutine(service.prune_tokens())
        await service.stopService()
        await queued
        self.assertFalse(service.pruning.running)
        await service.prune_tokens()
        self.assertEqual([e for e in self.events if e.get("log_level") in (LogLevel.warn, LogLevel.error, LogLevel.critical)
                          and "prun" in str(e.get("log_format", ""))], [])
