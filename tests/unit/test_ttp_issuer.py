"""The TTP's decisions (Issuer.handle) as plain code: every refusal code, issuance, renewal, CRL."""

from __future__ import annotations

import datetime
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.trial import unittest

from tests.test_ttp_fixtures import TTPFixture, cached_key, csr_der, enroll_request
from tlsotp.database_url import PostgresTarget
from tlsotp.pki.builders import issue_certificate
from tlsotp.pki.keys import KeyType, PrivateKey
from tlsotp.pki.roles import Role
from tlsotp.pki.verify import PeerVerifier, verify_crl
from tlsotp.ttp import wire
from tlsotp.ttp.issuer import Issuer
from tlsotp.ttp.renewal_proof import sign_renewal
from tlsotp.ttp.wire import Refusal

DER = serialization.Encoding.DER


class IssuerTestCase(unittest.SynchronousTestCase):
    def database(self) -> PostgresTarget | None:
        """The store these tests run on: the data dir's SQLite file (a PostgreSQL twin overrides it)."""
        return None

    def setUp(self) -> None:
        self.ttp = TTPFixture(Path(self.mktemp()), database=self.database())
        self.addCleanup(self.ttp.close)
        self.key = cached_key(KeyType.EC_P256, "issuer-requester")

    def handle(self, request: wire.Request | bytes) -> wire.Reply:
        payload = request if isinstance(request, bytes) else wire.encode(request)
        outcome = self.ttp.issuer.handle(payload)
        self.assertNotIn("\n", outcome.summary)
        return outcome.reply

    def assertRefused(self, code: Refusal, request: wire.Request | bytes) -> wire.Refused:
        reply = self.handle(request)
        assert isinstance(reply, wire.Refused), reply
        self.assertEqual(reply.code, code, reply.detail)
        return reply

    def issued(self, request: wire.Request) -> x509.Certificate:
        reply = self.handle(request)
        assert isinstance(reply, wire.Issued), reply
        self.assertEqual(reply.root_der, self.ttp.ca.root_der)
        return x509.load_der_x509_certificate(reply.cert_der)

    def enroll(self, name: str = "bank.example", role: Role = Role.SERVER, key: PrivateKey | None = None) -> x509.Certificate:
        token = self.ttp.token(name, role)
        return self.issued(enroll_request(token, name, role, key or self.key))

    def renew_request(
        self, cert: x509.Certificate, key: PrivateKey, new_key: PrivateKey | None = None, *, timestamp: int | None = None,
        name: str | None = None,
    ) -> wire.RenewRequest:
        cert_der = cert.public_bytes(DER)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        csr = csr_der(new_key or key, name or san.get_values_for_type(x509.DNSName)[0])
        nonce = secrets.token_bytes(wire.NONCE_BYTES)
        ts = int(self.ttp.clock.now.timestamp()) if timestamp is None else timestamp
        return wire.RenewRequest(cert_der, csr, nonce, ts, sign_renewal(key, cert_der, csr, nonce, ts))


class EnrollmentTests(IssuerTestCase):
    def test_issued_certificate_is_what_was_authorised(self) -> None:
        cert = self.enroll("bank.example", Role.SERVER)
        PeerVerifier(self.ttp.ca.root, Role.SERVER, expected_names=["bank.example"], clock=self.ttp.clock).verify([cert])
        self.assertEqual(cert.public_key().public_numbers(), self.key.public_key().public_numbers())  # type: ignore[union-attr]
        self.assertEqual(cert.not_valid_after_utc - self.ttp.clock.now, datetime.timedelta(days=7))
        record = self.ttp.store.get_certificate(cert.serial_number)
        assert record is not None
        self.assertEqual(record.der, cert.public_bytes(DER))
        self.assertEqual((record.name, record.role), ("bank.example", Role.SERVER))

    def test_client_certificate_and_configurable_lifetime(self) -> None:
        self.ttp.issuer.cert_days = 2
        cert = self.enroll("alice.example", Role.CLIENT)
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(list(eku), [ExtendedKeyUsageOID.CLIENT_AUTH])
        self.assertEqual(cert.not_valid_after_utc - self.ttp.clock.now, datetime.timedelta(days=2))

    def test_token_is_spent_by_first_success(self) -> None:
        token = self.ttp.token()
        self.issued(enroll_request(token, "bank.example", Role.SERVER, self.key))
        stored = self.ttp.store.get_token(token.token_id)
        assert stored is not None and stored.spent_at is not None
        other_key = cached_key(KeyType.EC_P256, "issuer-other")
        self.assertRefused(Refusal.token_spent, enroll_request(token, "bank.example", Role.SERVER, other_key))
        self.assertEqual(len(self.ttp.store.list_certificates()), 1)

    def test_failures_do_not_spend_the_token(self) -> None:
        token = self.ttp.token()
        request = enroll_request(token, "bank.example", Role.SERVER, self.key, csr=csr_der(self.key, "evil.example"))
        self.assertRefused(Refusal.name_mismatch, request)
        self.issued(enroll_request(token, "bank.example", Role.SERVER, self.key))

    def test_unknown_token(self) -> None:
        from tlsotp.ttp.tokens import Token

        self.assertRefused(Refusal.unknown_token, enroll_request(Token.generate(), "bank.example", Role.SERVER, self.key))

    def test_bad_token_proof(self) -> None:
        token = self.ttp.token()
        request = enroll_request(token, "bank.example", Role.SERVER, self.key)
        forged = wire.EnrollRequest(request.token_id, request.role, request.name, request.nonce, request.csr_der, b"\x00" * 32)
        self.assertRefused(Refusal.bad_token_proof, forged)
        # A man in the middle swapping in his own CSR breaks the proof.
        mallory = cached_key(KeyType.EC_P256, "mallory")
        swapped = wire.EnrollRequest(
            request.token_id, request.role, request.name, request.nonce, csr_der(mallory, "bank.example"), request.proof
        )
        self.assertRefused(Refusal.bad_token_proof, swapped)

    def test_proof_is_checked_before_token_state(self) -> None:
        token = self.ttp.token()
        self.issued(enroll_request(token, "bank.example", Role.SERVER, self.key))
        replay = enroll_request(token, "bank.example", Role.SERVER, self.key)
        without_secret = wire.EnrollRequest(replay.token_id, replay.role, replay.name, replay.nonce, replay.csr_der, b"\x01" * 32)
        self.assertRefused(Refusal.bad_token_proof, without_secret)

    def test_token_expired(self) -> None:
        token = self.ttp.token(ttl=datetime.timedelta(minutes=10))
        self.ttp.clock.advance(minutes=10)
        self.assertRefused(Refusal.token_expired, enroll_request(token, "bank.example", Role.SERVER, self.key))

    def test_name_and_role_mismatch(self) -> None:
        token = self.ttp.token("bank.example", Role.SERVER)
        self.assertRefused(Refusal.name_mismatch, enroll_request(token, "other.example", Role.SERVER, self.key))
        self.assertRefused(Refusal.role_mismatch, enroll_request(token, "bank.example", Role.CLIENT, self.key))

    def test_csr_refusals(self) -> None:
        token = self.ttp.token()
        self.assertRefused(Refusal.bad_csr, enroll_request(token, "bank.example", Role.SERVER, self.key, csr=b"garbage"))
        good = bytearray(csr_der(self.key, "bank.example"))
        good[-3] ^= 1
        self.assertRefused(Refusal.bad_signature, enroll_request(token, "bank.example", Role.SERVER, self.key, csr=bytes(good)))
        weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        self.assertRefused(Refusal.weak_key, enroll_request(token, "bank.example", Role.SERVER, weak))
        p521 = ec.generate_private_key(ec.SECP521R1())
        self.assertRefused(Refusal.weak_key, enroll_request(token, "bank.example", Role.SERVER, p521))

    def test_framing_level_refusals(self) -> None:
        self.assertRefused(Refusal.decode_error, b"\x01\x00")
        self.assertRefused(Refusal.unknown_message, b"\x42")

    def test_database_trouble_is_internal_error_not_a_crash(self) -> None:
        self.ttp.store.close()
        reply = self.assertRefused(Refusal.internal_error, enroll_request(self.ttp.token(), "bank.example", Role.SERVER, self.key))
        self.assertNotIn("Cannot operate", reply.detail)  # the cause goes to the log, not the peer
        self.ttp.store = self.ttp.open_store()

    def test_rsa_ca_and_rsa_requester(self) -> None:
        ttp = TTPFixture(Path(self.mktemp()), KeyType.RSA_2048, database=self.database())
        self.addCleanup(ttp.close)
        key = cached_key(KeyType.RSA_2048, "requester")
        reply = ttp.issuer.handle(wire.encode(enroll_request(ttp.token(), "bank.example", Role.SERVER, key)))
        assert isinstance(reply.reply, wire.Issued), reply
        cert = x509.load_der_x509_certificate(reply.reply.cert_der)
        self.assertTrue(cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment)


class RenewalTests(IssuerTestCase):
    def test_same_key_and_new_key(self) -> None:
        first = self.enroll()
        second = self.issued(self.renew_request(first, self.key))
        self.assertNotEqual(second.serial_number, first.serial_number)
        self.assertEqual(second.public_key(), first.public_key())
        new_key = cached_key(KeyType.EC_P384, "renewed")
        third = self.issued(self.renew_request(second, self.key, new_key))
        self.assertEqual(third.public_key().public_numbers(), new_key.public_key().public_numbers())  # type: ignore[union-attr]
        PeerVerifier(self.ttp.ca.root, Role.SERVER, expected_names=["bank.example"], clock=self.ttp.clock).verify([third])
        statuses = [r.status(self.ttp.clock.now) for r in self.ttp.store.list_certificates()]
        self.assertEqual(sum(s == "valid" for s in statuses), 1)
        self.assertEqual(sum(s.startswith("superseded") for s in statuses), 2)

    def test_replayed_request_gets_the_same_successor_and_nothing_more(self) -> None:
        # (Retries and reuse in detail: tests/unit/test_ttp_lineage.py.)
        first = self.enroll()
        request = self.renew_request(first, self.key)
        successor = self.issued(request)
        self.assertEqual(self.issued(request), successor)
        self.assertEqual(len(self.ttp.store.list_certificates()), 2)

    def test_signature_must_be_by_the_current_key(self) -> None:
        first = self.enroll()
        mallory = cached_key(KeyType.EC_P256, "mallory")
        self.assertRefused(Refusal.bad_signature, self.renew_request(first, mallory))
        # Swapping the new CSR after signing breaks the signature too.
        request = self.renew_request(first, self.key)
        swapped = wire.RenewRequest(request.cert_der, csr_der(mallory, "bank.example"), request.nonce, request.timestamp, request.signature)
        self.assertRefused(Refusal.bad_signature, swapped)

    def test_timestamp_window(self) -> None:
        first = self.enroll()
        now = int(self.ttp.clock.now.timestamp())
        self.assertRefused(Refusal.bad_timestamp, self.renew_request(first, self.key, timestamp=now - 301))
        self.assertRefused(Refusal.bad_timestamp, self.renew_request(first, self.key, timestamp=now + 301))
        self.issued(self.renew_request(first, self.key, timestamp=now - 299))

    def test_unknown_expired_revoked_certificates(self) -> None:
        foreign_ttp = TTPFixture(Path(self.mktemp()), database=self.database())
        self.addCleanup(foreign_ttp.close)
        foreign = issue_certificate(
            foreign_ttp.ca.key, foreign_ttp.ca.root, self.key.public_key(), name="bank.example", role=Role.SERVER,
            days=7, now=self.ttp.clock.now,
        )
        self.assertRefused(Refusal.not_renewable, self.renew_request(foreign, self.key))
        self.assertRefused(Refusal.not_renewable, wire.RenewRequest(b"junk", b"csr", b"n" * 32, 0, b"sig"))

        revoked = self.enroll()
        self.ttp.store.revoke(revoked.serial_number, x509.ReasonFlags.key_compromise, now=self.ttp.clock.now)
        self.assertRefused(Refusal.not_renewable, self.renew_request(revoked, self.key))

        expiring = self.enroll("alice.example", Role.CLIENT)
        self.ttp.clock.advance(days=8)
        self.assertRefused(Refusal.not_renewable, self.renew_request(expiring, self.key))

    def test_renewal_keeps_name_and_role(self) -> None:
        first = self.enroll("alice.example", Role.CLIENT)
        self.assertRefused(Refusal.name_mismatch, self.renew_request(first, self.key, name="bank.example"))
        renewed = self.issued(self.renew_request(first, self.key))
        self.assertEqual(list(renewed.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value), [ExtendedKeyUsageOID.CLIENT_AUTH])

    def test_weak_new_key(self) -> None:
        first = self.enroll()
        weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        self.assertRefused(Refusal.weak_key, self.renew_request(first, self.key, weak))


class CRLTests(IssuerTestCase):
    def crl(self) -> x509.CertificateRevocationList:
        reply = self.handle(wire.CRLRequest())
        assert isinstance(reply, wire.CRLReply)
        self.assertEqual(reply.root_der, self.ttp.ca.root_der)
        crl = x509.load_der_x509_crl(reply.crl_der)
        verify_crl(crl, self.ttp.ca.root, self.ttp.clock.now)
        return crl

    def number(self, crl: x509.CertificateRevocationList) -> int:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number

    def test_cached_until_a_revocation_then_rebuilt_with_a_higher_number(self) -> None:
        first = self.crl()
        self.assertEqual(len(first), 0)
        self.assertEqual(self.number(self.crl()), self.number(first))  # served from the store
        cert = self.enroll()
        # The operator revokes through another connection, as 'tlsotp ttp revoke' does.
        other = self.ttp.open_store()
        other.revoke(cert.serial_number, x509.ReasonFlags.key_compromise, now=self.ttp.clock.now)
        other.close()
        second = self.crl()
        self.assertGreater(self.number(second), self.number(first))
        revoked = second.get_revoked_certificate_by_serial_number(cert.serial_number)
        assert revoked is not None
        self.assertEqual(revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason, x509.ReasonFlags.key_compromise)

    def test_short_next_update_and_refresh_at_half_life(self) -> None:
        first = self.crl()
        assert first.next_update_utc is not None
        self.assertEqual(first.next_update_utc - self.ttp.clock.now, datetime.timedelta(days=1))
        self.ttp.clock.advance(hours=13)
        second = self.crl()
        self.assertGreater(self.number(second), self.number(first))

    def test_numbers_survive_reopening(self) -> None:
        first = self.number(self.crl())
        self.ttp.store.close()
        self.ttp.store = self.ttp.open_store()
        self.ttp.issuer = Issuer(self.ttp.ca, self.ttp.store, clock=self.ttp.clock)
        self.ttp.clock.advance(hours=13)
        self.assertEqual(self.number(self.crl()), first + 1)
