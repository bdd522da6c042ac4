"""certified_name and leaf_key are cached per certificate (issue 12: per-session work of a
returning client): equal DER gives the cached answer, a refusal is raised every time."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from twisted.trial import unittest

from tests.credentials import test_ca
from tlsotp.alerts import Alert, AlertError
from tlsotp.handshake import certificates
from tlsotp.handshake.certificates import leaf_key, parse_chain
from tlsotp.pki import credentials
from tlsotp.pki.credentials import certified_name, leaf_name
from tlsotp.pki.roles import Role


def self_signed(names: list[str], key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    )
    return builder.sign(key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256())


def reparsed(cert: x509.Certificate) -> x509.Certificate:
    """A distinct object with the same DER, as each session parses it."""
    return x509.load_der_x509_certificate(cert.public_bytes(serialization.Encoding.DER))


class CertificateCacheTests(unittest.SynchronousTestCase):
    def test_equal_der_gives_the_same_answers(self) -> None:
        cert = test_ca().issue("alice.example", Role.CLIENT).certificate
        first, again = reparsed(cert), reparsed(cert)
        self.assertIsNot(first, again)
        self.assertEqual(certified_name(first), "alice.example")
        self.assertEqual(certified_name(again), "alice.example")
        self.assertIs(leaf_key([again])[0], leaf_key([first])[0])

    def test_a_received_chain_finds_its_leaf_key_by_its_der(self) -> None:
        """A chain as parse_chain returns it is looked up by its leaf's wire bytes."""
        ca = test_ca()
        alice, bob = (ca.issue(n, Role.CLIENT).certificate for n in ("alice.example", "bob.example"))
        alice_der, bob_der = (c.public_bytes(serialization.Encoding.DER) for c in (alice, bob))
        first = leaf_key(parse_chain([alice_der]))
        self.assertIs(leaf_key(parse_chain([alice_der]))[0], first[0])
        self.assertIs(certificates._keys_by_der[alice_der], first)
        self.assertEqual(first[0].public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
                         alice.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
        self.assertNotEqual(leaf_key(parse_chain([bob_der]))[0], first[0])
        self.assertEqual(leaf_key(parse_chain([bob_der]))[0], bob.public_key())

    def test_a_received_chain_finds_its_leaf_name_by_its_der(self) -> None:
        ca = test_ca()
        alice_der = ca.issue("alice.example", Role.CLIENT).certificate.public_bytes(serialization.Encoding.DER)
        bob_der = ca.issue("bob.example", Role.CLIENT).certificate.public_bytes(serialization.Encoding.DER)
        for _ in range(2):
            self.assertEqual(leaf_name(parse_chain([alice_der])), "alice.example")
            self.assertEqual(leaf_name(parse_chain([bob_der])), "bob.example")
            self.assertEqual(leaf_name([x509.load_der_x509_certificate(bob_der)]), "bob.example")  # a plain list
        self.assertEqual(credentials._names_by_der[alice_der], "alice.example")
        two_names = self_signed(["a.example", "b.example"], ec.generate_private_key(ec.SECP256R1()))
        two_der = two_names.public_bytes(serialization.Encoding.DER)
        for _ in range(2):
            with self.assertRaises(AlertError) as wire_refusal:
                leaf_name(parse_chain([two_der]))
            with self.assertRaises(AlertError) as refusal:
                certified_name(reparsed(two_names))
            wire, plain = wire_refusal.exception, refusal.exception
            self.assertEqual((wire.alert, wire.detail), (plain.alert, plain.detail))
        self.assertNotIn(two_der, credentials._names_by_der)
        self.patch(credentials, "MAX_KNOWN_LEAF_NAMES", 1)
        self.patch(credentials, "_names_by_der", {})
        for wire in (alice_der, bob_der):
            leaf_name(parse_chain([wire]))
            self.assertEqual(list(credentials._names_by_der), [wire])

    def test_the_der_memo_is_bounded(self) -> None:
        self.patch(certificates, "MAX_KNOWN_LEAF_KEYS", 1)
        self.patch(certificates, "_keys_by_der", {})
        ca = test_ca()
        for name in ("alice.example", "bob.example", "alice.example"):
            der = ca.issue(name, Role.CLIENT).certificate.public_bytes(serialization.Encoding.DER)
            leaf_key(parse_chain([der]))
            self.assertEqual(list(certificates._keys_by_der), [der])

    def test_a_different_certificate_is_not_served_from_the_cache(self) -> None:
        ca = test_ca()
        self.assertEqual(certified_name(ca.issue("alice.example", Role.CLIENT).certificate), "alice.example")
        self.assertEqual(certified_name(ca.issue("bob.example", Role.CLIENT).certificate), "bob.example")

    def test_refusals_are_raised_every_time(self) -> None:
        two_names = self_signed(["a.example", "b.example"], ec.generate_private_key(ec.SECP256R1()))
        ed_key = self_signed(["a.example"], ed25519.Ed25519PrivateKey.generate())
        for _ in range(2):
            with self.assertRaises(AlertError) as name_refusal:
                certified_name(reparsed(two_names))
            self.assertEqual(name_refusal.exception.alert, Alert.bad_certificate)
            with self.assertRaises(AlertError) as key_refusal:
                leaf_key([reparsed(ed_key)])
            self.assertEqual(key_refusal.exception.alert, Alert.unsupported_certificate)
            ed_der = ed_key.public_bytes(serialization.Encoding.DER)
            with self.assertRaises(AlertError) as wire_refusal:
                leaf_key(parse_chain([ed_der]))
            refusals = (wire_refusal.exception, key_refusal.exception)
            self.assertEqual([(e.alert, e.detail) for e in refusals], [(key_refusal.exception.alert, key_refusal.exception.detail)] * 2)
            self.assertNotIn(ed_der, certificates._keys_by_der)
