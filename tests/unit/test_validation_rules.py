"""docs/protocol.rst, "Certificate validation", rule by rule: what the spec says is what
``PeerVerifier`` does (names and their case and wildcard rules, no intermediates, the subject
CN ignored, inclusive validity bounds, CRL signature and freshness)."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.trial import unittest

from tests.credentials import NOW, test_ca
from tlsotp.alerts import Alert, AlertError
from tlsotp.pki.builders import BACKDATE, build_crl
from tlsotp.pki.keys import PrivateKey
from tlsotp.pki.roles import Role
from tlsotp.pki.verify import PeerVerifier

HOUR = datetime.timedelta(hours=1)


class ValidationRuleTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = test_ca()

    def certificate(
        self,
        names: list[str],
        *,
        issuer: tuple[PrivateKey, x509.Certificate] | None = None,
        ca: bool = False,
        common_name: str = "x",
        not_before: datetime.datetime = NOW - HOUR,
        not_after: datetime.datetime = NOW + HOUR,
    ) -> tuple[PrivateKey, x509.Certificate]:
        issuer_key, issuer_cert = issuer or (self.ca.key, self.ca.root)
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(issuer_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)  # type: ignore[arg-type]
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        return key, builder.sign(issuer_key, hashes.SHA256())

    def outcome(self, chain: list[x509.Certificate], name: str = "bank.example", **kwargs: object) -> Alert | None:
        try:
            PeerVerifier(self.ca.root, Role.SERVER, expected_names=[name], **kwargs)(chain)  # type: ignore[arg-type]
        except AlertError as exc:
            return exc.alert
        return None

    def test_names_match_case_insensitively_and_whole(self) -> None:
        self.assertIsNone(self.outcome([self.certificate(["BANK.Example"])[1]]))
        self.assertIsNone(self.outcome([self.certificate(["bank.example"])[1]], "Bank.EXAMPLE"))
        self.assertIsNone(self.outcome([self.certificate(["other.example", "bank.example"])[1]]))
        for names in (["bank.example."], ["example"], ["ank.example"], ["www.bank.example"]):
            self.assertEqual(self.outcome([self.certificate(names)[1]]), Alert.bad_certificate, names)

    def test_the_subject_common_name_is_never_used(self) -> None:
        leaf = self.certificate(["other.example"], common_name="bank.example")[1]
        self.assertEqual(self.outcome([leaf]), Alert.bad_certificate)

    def test_a_leftmost_wildcard_matches_one_label(self) -> None:
        leaf = self.certificate(["*.tlsotp.example"])[1]
        self.assertIsNone(self.outcome([leaf], "bank.tlsotp.example"))
        self.assertEqual(self.outcome([leaf], "tlsotp.example"), Alert.bad_certificate)
        self.assertEqual(self.outcome([leaf], "a.bank.tlsotp.example"), Alert.bad_certificate)

    def test_intermediates_are_not_allowed(self) -> None:
        intermediate = self.certificate(["int.example"], ca=True)
        leaf = self.certificate(["bank.example"], issuer=intermediate)[1]
        self.assertEqual(self.outcome([leaf, intermediate[1]]), Alert.bad_certificate)

    def test_a_leaf_issued_by_another_ca_is_unknown_ca(self) -> None:
        other = test_ca("other")  # another CA, with its own key
        stranger = self.certificate(["bank.example"], issuer=(other.key, other.root))[1]
        self.assertEqual(self.outcome([stranger]), Alert.unknown_ca)

    def test_extra_certificates_are_ignored_when_the_root_issued_the_leaf(self) -> None:
        leaf = self.certificate(["bank.example"])[1]
        self.assertIsNone(self.outcome([leaf, self.ca.root]))

    def test_validity_bounds_are_inclusive(self) -> None:
        start = NOW.replace(microsecond=0)
        leaf = self.certificate(["bank.example"], not_before=start, not_after=start + HOUR)[1]
        for when, expected in (
            (start, None), (start + HOUR, None),
            (start - datetime.timedelta(seconds=1), Alert.certificate_expired),
            (start + HOUR + datetime.timedelta(seconds=1), Alert.certificate_expired),
        ):
            self.assertEqual(self.outcome([leaf], clock=lambda when=when: when), expected, when)

    def test_crl_freshness(self) -> None:
        leaf = self.certificate(["bank.example"])[1]

        def crl(this_update: datetime.datetime, next_update: datetime.timedelta) -> x509.CertificateRevocationList:
            # build_crl backdates thisUpdate by BACKDATE, as the TTP does
            built = this_update + BACKDATE
            return build_crl(self.ca.key, self.ca.root, [], now=built, next_update=next_update - BACKDATE, crl_number=1)

        self.assertIsNone(self.outcome([leaf], clock=lambda: NOW, crl=crl(NOW, HOUR)))
        self.assertEqual(crl(NOW, HOUR).last_update_utc, NOW.replace(microsecond=0))
        self.assertEqual(self.outcome([leaf], clock=lambda: NOW, crl=crl(NOW - 2 * HOUR, HOUR)), Alert.certificate_unknown)  # stale
        self.assertIsNone(self.outcome([leaf], clock=lambda: NOW, crl=crl(NOW + datetime.timedelta(minutes=9), HOUR)))
        self.assertEqual(
            self.outcome([leaf], clock=lambda: NOW, crl=crl(NOW + datetime.timedelta(minutes=11), HOUR)), Alert.certificate_unknown
        )  # dated more than ten minutes ahead
        other = test_ca("other")
        foreign = build_crl(other.key, other.root, [], now=NOW, next_update=HOUR, crl_number=1)
        self.assertEqual(self.outcome([leaf], clock=lambda: NOW, crl=foreign), Alert.certificate_unknown)
