"""Validation work done once per certificate/CRL generation, not per session (issue 12).

A ``PeerVerifier`` checks its CRL's signature and prebuilds the path validator's policy when it
is built or given a new CRL; the bank server's factory shares one ``ServerConfig`` per
generation. These tests hold the same verifier (and the same factory) across changes of the CRL
and of the clock, and check that nothing cached lets a session through that a fresh verifier
would refuse: a newly revoked, an expired, a stale-CRL, a bad-CRL or a forged leaf.
"""

from __future__ import annotations

import copy
import datetime
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from tests.credentials import NOW, cached_key, test_ca
from tlsotp.alerts import Alert, AlertError
from tlsotp.handshake import ServerConfig
from tlsotp.handshake.certificates import parse_chain
from tlsotp.handshake.suites import HashAlgorithm
from tlsotp.handshake.transcript import Transcript
from tlsotp.pki import der, verify
from tlsotp.pki.builders import Revocation, build_crl, build_root
from tlsotp.pki.keys import KeyType
from tlsotp.pki.roles import Role
from tlsotp.pki.verify import PeerVerifier
from tlsotp.services.bank_server import OTPServerFactory, ServerIdentity

DAY = datetime.timedelta(days=1)


class Clock:
    """A settable clock for the verifier: the same verifier, later."""

    def __init__(self, now: datetime.datetime) -> None:
        self.now = now

    def __call__(self) -> datetime.datetime:
        return self.now


def alert_of(verifier: PeerVerifier, chain: list[x509.Certificate]) -> Alert | None:
    try:
        verifier.verify(chain)
    except AlertError as exc:
        return exc.alert
    return None


class VerifierGenerationTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = test_ca()
        self.alice = self.ca.issue("alice.example", Role.CLIENT, days=7)
        self.bob = self.ca.issue("bob.example", Role.CLIENT, days=7)
        self.clock = Clock(NOW)
        self.verifier = PeerVerifier(self.ca.root, Role.CLIENT, crl=self.ca.crl(), clock=self.clock)

    def crl(self, *revoked: x509.Certificate, number: int, next_update: datetime.timedelta = DAY) -> x509.CertificateRevocationList:
        return build_crl(
            self.ca.key, self.ca.root, [Revocation(c.serial_number, NOW, None) for c in revoked],
            now=NOW, next_update=next_update, crl_number=number,
        )

    def test_a_new_crl_generation_refuses_a_newly_revoked_certificate(self) -> None:
        self.assertIsNone(alert_of(self.verifier, [self.alice.certificate]))
        self.verifier.crl = self.crl(self.alice.certificate, number=2)
        self.assertEqual(alert_of(self.verifier, [self.alice.certificate]), Alert.certificate_revoked)
        self.assertIsNone(alert_of(self.verifier, [self.bob.certificate]))
        # and back: a later CRL without the entry (as after a mistaken revocation is undone)
        self.verifier.crl = self.crl(number=3)
        self.assertIsNone(alert_of(self.verifier, [self.alice.certificate]))

    def test_an_expired_leaf_is_refused_as_time_passes(self) -> None:
        self.verifier.crl = self.crl(number=2, next_update=30 * DAY)
        self.assertIsNone(alert_of(self.verifier, [self.alice.certificate]))
        self.clock.now = self.alice.certificate.not_valid_after_utc
        self.assertIsNone(alert_of(self.verifier, [self.alice.certificate]))  # inclusive bound
        self.clock.now += datetime.timedelta(seconds=1)
        self.assertEqual(alert_of(self.verifier, [self.alice.certificate]), Alert.certificate_expired)
        self.assertEqual(self.verifier.path_validations, 1)  # refused from the remembered chain too
        # and a leaf not yet valid when the verifier was built becomes valid later
        self.clock.now = NOW
        later = self.ca.issue("carol.example", Role.CLIENT)  # issued at NOW, backdated
        self.clock.now = later.certificate.not_valid_before_utc - datetime.timedelta(seconds=1)
        self.assertEqual(alert_of(self.verifier, [later.certificate]), Alert.certificate_expired)
        self.clock.now = later.certificate.not_valid_before_utc
        self.assertIsNone(alert_of(self.verifier, [later.certificate]))

    def test_a_crl_going_stale_is_refused_as_time_passes(self) -> None:
        crl = self.crl(number=2, next_update=datetime.timedelta(hours=1))
        self.verifier.crl = crl
        assert crl.next_update_utc is not None
        self.clock.now = crl.next_update_utc
        self.assertIsNone(alert_of(self.verifier, [self.alice.certificate]))
        self.clock.now += datetime.timedelta(seconds=1)
        self.assertEqual(alert_of(self.verifier, [self.alice.certificate]), Alert.certificate_unknown)
        # a fresh generation brings it back
        self.verifier.crl = build_crl(self.ca.key, self.ca.root, [], now=self.clock.now, next_update=DAY, crl_number=3)
        self.assertIsNone(alert_of(self.verifier, [self.alice.certificate]))

    def test_a_crl_with_a_bad_signature_refuses_every_session(self) -> None:
        other = test_ca("other")
        self.verifier.crl = build_crl(other.key, other.root, [], now=NOW, next_update=DAY, crl_number=2)
        for _ in range(2):
            self.assertEqual(alert_of(self.verifier, [self.alice.certificate]), Alert.certificate_unknown)
        # Another key's signature under our root's name: checked once, refused every time.
        forged = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ca.root.subject)
            .last_update(NOW - datetime.timedelta(minutes=1))
            .next_update(NOW + DAY)
            .sign(other.key, hashes.SHA256())  # type: ignore[arg-type]
        )
        self.verifier.crl = forged
        for _ in range(2):
            self.assertEqual(alert_of(self.verifier, [self.alice.certificate]), Alert.certificate_unknown)
        self.verifier.crl = self.crl(number=4)
        self.assertIsNone(alert_of(self.verifier, [self.alice.certificate]))

    def test_the_path_validator_checks_the_leaf_signature(self) -> None:
        # The stand-alone leaf signature check is gone from the accepting path: a leaf naming our
        # root as issuer (name and key identifier) but signed by another key must still fail.
        other = test_ca("other")
        key = cached_key(KeyType.EC_P256, "forged-leaf")
        root_ski = self.ca.root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        forged = (
            x509.CertificateBuilder()
            .subject_name(self.alice.certificate.subject)
            .issuer_name(self.ca.root.subject)
            .public_key(key.public_key())  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(hours=1))
            .not_valid_after(NOW + DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("alice.example")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)  # type: ignore[arg-type]
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski), critical=False)
            .sign(other.key, hashes.SHA256())  # type: ignore[arg-type]
        )
        for _ in range(2):
            self.assertEqual(alert_of(self.verifier, [forged]), Alert.unknown_ca)
        self.assertIsNone(alert_of(self.verifier, [self.alice.certificate]))

    def test_role_names_and_key_rules_still_hold_on_a_reused_verifier(self) -> None:
        server = self.ca.issue("bank.example", Role.SERVER)
        named = PeerVerifier(self.ca.root, Role.CLIENT, expected_names=["alice.example"], clock=self.clock)
        for _ in range(2):
            self.assertIsNone(alert_of(named, [self.alice.certificate]))
            self.assertEqual(alert_of(named, [self.bob.certificate]), Alert.bad_certificate)  # SAN match
            self.assertEqual(alert_of(self.verifier, [server.certificate]), Alert.unsupported_certificate)  # EKU

    def test_a_validated_chain_is_remembered_until_the_crl_changes(self) -> None:
        chain = [self.alice.certificate]
        for _ in range(3):
            self.assertIsNone(alert_of(self.verifier, chain))
        self.assertEqual(self.verifier.path_validations, 1)
        self.assertIsNone(alert_of(self.verifier, [self.bob.certificate]))
        self.assertEqual(self.verifier.path_validations, 2)
        # A refused chain is never remembered: it is validated (and refused) every time.
        stranger = test_ca("other").issue("mallory.example", Role.CLIENT)
        for _ in range(2):
            self.assertEqual(alert_of(self.verifier, [stranger.certificate]), Alert.unknown_ca)
        self.assertEqual(self.verifier.path_validations, 4)
        # A new CRL generation forgets every remembered chain.
        self.verifier.crl = self.crl(self.bob.certificate, number=2)
        self.assertIsNone(alert_of(self.verifier, chain))
        self.assertEqual(self.verifier.path_validations, 5)
        self.assertEqual(alert_of(self.verifier, [self.bob.certificate]), Alert.certificate_revoked)
        # The exact DER is the key: a chain with one more certificate is validated on its own.
        self.assertIsNone(alert_of(self.verifier, [self.alice.certificate, self.ca.root]))
        self.assertEqual(self.verifier.path_validations, 7)

    def test_a_received_chain_is_remembered_by_the_der_it_arrived_as(self) -> None:
        """parse_chain keeps each certificate's wire bytes; the verifier keys its cache by them
        (no re-encoding) and finds the same entry a chain of re-encoded certificates gets."""
        wire = [self.alice.certificate.public_bytes(serialization.Encoding.DER), self.ca.root.public_bytes(serialization.Encoding.DER)]
        chain = parse_chain(wire)
        self.assertIsInstance(chain, der.ParsedChain)
        assert isinstance(chain, der.ParsedChain)
        self.assertEqual(chain.der, tuple(wire))
        self.assertEqual(chain, (self.alice.certificate, self.ca.root))  # a tuple like any other
        self.assertEqual(copy.deepcopy(chain).der, tuple(wire))
        for _ in range(2):
            self.assertIsNone(alert_of(self.verifier, list(parse_chain(wire[:1]))))  # a list: re-encoded
            self.verifier.verify(parse_chain(wire[:1]))
        self.assertEqual(self.verifier.path_validations, 1)
        self.verifier.verify(chain)
        self.assertEqual(self.verifier.path_validations, 2)  # another chain: validated on its own
        # A refusal from the wire bytes is the same refusal.
        stranger = test_ca("other").issue("mallory.example", Role.CLIENT)
        stranger_wire = [stranger.certificate.public_bytes(serialization.Encoding.DER)]
        for _ in range(2):
            self.assertEqual(alert_of(self.verifier, list(parse_chain(stranger_wire))), Alert.unknown_ca)
            with self.assertRaises(AlertError) as caught:
                self.verifier.verify(parse_chain(stranger_wire))
            self.assertEqual(caught.exception.alert, Alert.unknown_ca)

    def test_revocation_is_looked_up_once_per_serial_and_generation(self) -> None:
        self.verifier.crl = self.crl(self.bob.certificate, number=2)
        for _ in range(3):
            self.assertEqual(alert_of(self.verifier, [self.bob.certificate]), Alert.certificate_revoked)
            self.assertIsNone(alert_of(self.verifier, [self.alice.certificate]))
        self.assertEqual(self.verifier._revoked, {self.bob.certificate.serial_number: True, self.alice.certificate.serial_number: False})
        # The next generation asks its own CRL: Alice revoked, Bob back.
        self.verifier.crl = self.crl(self.alice.certificate, number=3)
        self.assertEqual(self.verifier._revoked, {})
        for _ in range(2):
            self.assertEqual(alert_of(self.verifier, [self.alice.certificate]), Alert.certificate_revoked)
            self.assertIsNone(alert_of(self.verifier, [self.bob.certificate]))

    def test_the_revocation_memo_is_bounded(self) -> None:
        self.patch(verify, "MAX_VALIDATED_CHAINS", 1)
        self.verifier.crl = self.crl(self.bob.certificate, number=2)
        for _ in range(2):
            self.assertEqual(alert_of(self.verifier, [self.bob.certificate]), Alert.certificate_revoked)
            self.assertIsNone(alert_of(self.verifier, [self.alice.certificate]))
            self.assertEqual(len(self.verifier._revoked), 1)

    def test_a_crl_dated_in_the_future_is_refused_until_its_time(self) -> None:
        ahead = build_crl(self.ca.key, self.ca.root, [], now=NOW + datetime.timedelta(hours=1), next_update=DAY, crl_number=2)
        self.verifier.crl = ahead
        with self.assertRaises(AlertError) as caught:
            self.verifier.verify([self.alice.certificate])
        self.assertEqual((caught.exception.alert, caught.exception.detail), (Alert.certificate_unknown, "CRL is dated in the future"))
        self.clock.now = ahead.last_update_utc - verify.CRL_CLOCK_SKEW
        self.assertIsNone(alert_of(self.verifier, [self.alice.certificate]))  # inclusive bound
        self.clock.now -= datetime.timedelta(seconds=1)
        self.assertEqual(alert_of(self.verifier, [self.alice.certificate]), Alert.certificate_unknown)

    def test_a_remembered_chain_still_has_its_times_checked(self) -> None:
        # A root that expires before the leaf (the TTP never issues one; built by hand here).
        root_key = cached_key(KeyType.EC_P256, "short-root")
        root = build_root(root_key, "short-lived root", days=1, now=NOW)
        key = cached_key(KeyType.EC_P256, "long-leaf")
        leaf = (
            x509.CertificateBuilder()
            .subject_name(self.alice.certificate.subject)
            .issuer_name(root.subject)
            .public_key(key.public_key())  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(hours=1))
            .not_valid_after(NOW + 7 * DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("alice.example")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)  # type: ignore[arg-type]
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)  # type: ignore[arg-type]
            .sign(root_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        clock = Clock(NOW)
        remembering = PeerVerifier(root, Role.CLIENT, clock=clock)
        self.assertIsNone(alert_of(remembering, [leaf]))
        clock.now = root.not_valid_after_utc + datetime.timedelta(seconds=1)
        fresh = PeerVerifier(root, Role.CLIENT, clock=clock)
        self.assertEqual(alert_of(fresh, [leaf]), Alert.bad_certificate)  # the path validator's verdict
        self.assertEqual(alert_of(remembering, [leaf]), Alert.bad_certificate)  # the same, remembered
        self.assertEqual(remembering.path_validations, 1)
        clock.now = NOW + 8 * DAY
        self.assertEqual(alert_of(remembering, [leaf]), Alert.certificate_expired)


class FactoryGenerationTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = test_ca()
        self.server = self.ca.issue("bank.example", Role.SERVER)
        self.alice = self.ca.issue("alice.example", Role.CLIENT)
        self.factory = OTPServerFactory(
            ServerIdentity(self.server.key, self.server.chain, self.ca.root), None,  # type: ignore[arg-type]
            crl=self.ca.crl(),
        )

    def test_one_configuration_per_generation(self) -> None:
        first = self.factory.server_config()
        self.assertIs(self.factory.server_config(), first)
        self.assertEqual(first.encoded_chain, (self.server.certificate.public_bytes(serialization.Encoding.DER),))
        # A CRL refresh: a new configuration whose verifier refuses the newly revoked client.
        first.validate_peer([self.alice.certificate])  # accepted: does not raise
        self.factory.crl = self.ca.crl(self.alice.certificate)
        second = self.factory.server_config()
        self.assertIsNot(second, first)
        with self.assertRaises(AlertError) as caught:
            second.validate_peer([self.alice.certificate])
        self.assertEqual(caught.exception.alert, Alert.certificate_revoked)
        self.assertIs(self.factory.server_config(), second)
        # A renewal: new credentials, a new configuration presenting the new chain.
        renewed = self.ca.issue("bank.example", Role.SERVER, days=8)
        self.factory.identity = ServerIdentity(renewed.key, renewed.chain, self.ca.root)
        third = self.factory.server_config()
        self.assertIsNot(third, second)
        self.assertIsInstance(third, ServerConfig)
        self.assertEqual(third.encoded_chain, (renewed.certificate.public_bytes(serialization.Encoding.DER),))
        self.assertIs(self.factory.identity.chain, renewed.chain)


class IncrementalTranscriptTests(unittest.SynchronousTestCase):
    @given(st.lists(st.tuples(st.binary(max_size=300), st.booleans(), st.sampled_from(list(HashAlgorithm))), max_size=12))
    def test_every_digest_is_the_hash_of_everything_so_far(self, steps: list[tuple[bytes, bool, HashAlgorithm]]) -> None:
        transcript = Transcript()
        seen = b""
        for message, ask, algorithm in steps:
            transcript.append(message)
            seen += message
            if ask:
                self.assertEqual(transcript.digest(algorithm), hashlib.new(algorithm.value.lower(), seen).digest())
        for algorithm in HashAlgorithm:
            self.assertEqual(transcript.digest(algorithm), hashlib.new(algorithm.value.lower(), seen).digest())
            self.assertEqual(transcript.digest(algorithm), hashlib.new(algorithm.value.lower(), seen).digest())

    def test_a_deep_copy_goes_on_independently(self) -> None:
        transcript = Transcript()
        transcript.append(b"hello")
        transcript.digest(HashAlgorithm.SHA256)
        twin = copy.deepcopy(transcript)
        twin.append(b" world")
        self.assertEqual(transcript.digest(HashAlgorithm.SHA256), hashlib.sha256(b"hello").digest())
        self.assertEqual(twin.digest(HashAlgorithm.SHA256), hashlib.sha256(b"hello world").digest())
