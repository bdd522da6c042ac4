"""tlsotp.pki: what the CA builds, what CSR checks refuse, what PeerVerifier accepts and refuses,
PEM files on disk, fingerprints, names and message signatures."""

from __future__ import annotations

import datetime
import os
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.trial import unittest

from tests.test_ttp_fixtures import cached_key
from tlsotp.alerts import Alert, AlertError
from tlsotp.pki import pem
from tlsotp.pki.builders import Revocation, build_crl, build_root, issue_certificate
from tlsotp.pki.csr import CSRBadSignature, CSRNameMismatch, CSRRefused, CSRWeakKey, build_csr, check_csr, load_csr
from tlsotp.pki.fingerprint import fingerprint, matches_fingerprint, parse_fingerprint
from tlsotp.pki.keys import KeyType
from tlsotp.pki.names import check_dns_name
from tlsotp.pki.roles import Role
from tlsotp.pki.signing import sign_message, signature_is_valid
from tlsotp.pki.verify import PeerVerifier

NOW = datetime.datetime(2030, 6, 1, 12, 0, tzinfo=datetime.timezone.utc)


def _root(label: str = "main") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = cached_key(KeyType.EC_P256, f"root-{label}")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key, build_root(key, f"test root {label}", days=365, now=NOW)


ROOT_KEY, ROOT = _root()
OTHER_ROOT_KEY, OTHER_ROOT = _root("other")


def _leaf(name: str, role: Role, key_type: KeyType = KeyType.EC_P256, days: int = 7) -> x509.Certificate:
    key = cached_key(key_type, f"leaf-{name}")
    return issue_certificate(ROOT_KEY, ROOT, key.public_key(), name=name, role=role, days=days, now=NOW)


def _clock(moment: datetime.datetime = NOW) -> datetime.datetime:
    return moment


class RootExtensionTests(unittest.SynchronousTestCase):
    def test_root_is_a_path_length_zero_ca(self) -> None:
        bc = ROOT.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertTrue(bc.critical)
        self.assertTrue(bc.value.ca)
        self.assertEqual(bc.value.path_length, 0)

    def test_root_key_usage_is_cert_and_crl_signing_only(self) -> None:
        ku = ROOT.extensions.get_extension_for_class(x509.KeyUsage)
        self.assertTrue(ku.critical)
        self.assertTrue(ku.value.key_cert_sign and ku.value.crl_sign)
        self.assertFalse(ku.value.digital_signature or ku.value.key_encipherment)

    def test_root_is_self_signed_with_a_subject_key_identifier(self) -> None:
        ROOT.verify_directly_issued_by(ROOT)
        ski = ROOT.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        self.assertEqual(ski, x509.SubjectKeyIdentifier.from_public_key(ROOT_KEY.public_key()))


class LeafExtensionTests(unittest.SynchronousTestCase):
    def test_server_leaf(self) -> None:
        leaf = _leaf("bank.example", Role.SERVER)
        bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertTrue(bc.critical)
        self.assertFalse(bc.value.ca)
        ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        self.assertTrue(ku.digital_signature)
        self.assertFalse(ku.key_encipherment or ku.key_cert_sign or ku.crl_sign)
        self.assertEqual(list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value), [ExtendedKeyUsageOID.SERVER_AUTH])
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["bank.example"])
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        root_ski = ROOT.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        self.assertEqual(aki.key_identifier, root_ski.digest)
        leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        self.assertEqual(leaf.not_valid_after_utc - NOW, datetime.timedelta(days=7))
        self.assertEqual(leaf.issuer, ROOT.subject)

    def test_client_leaf_and_rsa_key_usage(self) -> None:
        leaf = _leaf("alice.example", Role.CLIENT, KeyType.RSA_2048)
        self.assertEqual(list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value), [ExtendedKeyUsageOID.CLIENT_AUTH])
        ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        self.assertTrue(ku.digital_signature and ku.key_encipherment)

    def test_serials_are_random_and_positive(self) -> None:
        serials = {_leaf("bank.example", Role.SERVER).serial_number for _ in range(5)}
        self.assertEqual(len(serials), 5)
        self.assertTrue(all(s > 0 for s in serials))


def _tampered_signature(csr: x509.CertificateSigningRequest) -> bytes:
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the signature value
    return bytes(der)


class CSRTests(unittest.SynchronousTestCase):
    def test_good_csr_yields_its_key(self) -> None:
        key = cached_key(KeyType.EC_P256, "csr")
        checked = check_csr(load_csr(build_csr(key, "bank.example").public_bytes(serialization.Encoding.DER)), "bank.example")
        self.assertEqual(checked.public_numbers(), key.public_key().public_numbers())

    def test_bad_signature(self) -> None:
        csr = build_csr(cached_key(KeyType.EC_P256, "csr"), "bank.example")
        with self.assertRaises(CSRBadSignature):
            check_csr(load_csr(_tampered_signature(csr)), "bank.example")

    def test_garbage_and_oversized(self) -> None:
        for data in (b"garbage", b"\x30\x03\x02\x01\x01", b"\x30" * 20000):
            with self.assertRaises(CSRRefused):
                load_csr(data)

    def test_rsa_1024_is_weak(self) -> None:
        weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        with self.assertRaises(CSRWeakKey):
            check_csr(build_csr(weak, "bank.example"), "bank.example")

    def test_unoffered_curve_is_refused(self) -> None:
        p521 = ec.generate_private_key(ec.SECP521R1())
        with self.assertRaises(CSRWeakKey):
            check_csr(build_csr(p521, "bank.example"), "bank.example")

    def test_other_algorithm_is_refused(self) -> None:
        key = ed25519.Ed25519PrivateKey.generate()
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bank.example")]))
            .sign(key, None)
        )
        with self.assertRaises(CSRWeakKey):
            check_csr(csr, "bank.example")

    def test_wrong_name(self) -> None:
        csr = build_csr(cached_key(KeyType.EC_P256, "csr"), "evil.example")
        with self.assertRaises(CSRNameMismatch):
            check_csr(csr, "bank.example")

    def _csr_with(self, cn: str, sans: list[x509.GeneralName]) -> x509.CertificateSigningRequest:
        return (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(cached_key(KeyType.EC_P256, "csr"), hashes.SHA256())
        )

    def test_extra_names(self) -> None:
        csr = self._csr_with("bank.example", [x509.DNSName("bank.example"), x509.DNSName("other.example")])
        with self.assertRaises(CSRNameMismatch):
            check_csr(csr, "bank.example")

    def test_non_dns_names(self) -> None:
        import ipaddress

        csr = self._csr_with("bank.example", [x509.DNSName("bank.example"), x509.IPAddress(ipaddress.ip_address("10.0.0.1"))])
        with self.assertRaises(CSRNameMismatch):
            check_csr(csr, "bank.example")


class PeerVerifierTests(unittest.SynchronousTestCase):
    def verify(self, leaf: x509.Certificate, role: Role, names: list[str] | None, **kw: object) -> x509.Certificate:
        verifier = PeerVerifier(ROOT, role, expected_names=names, clock=kw.pop("clock", _clock), **kw)  # type: ignore[arg-type]
        return verifier.verify([leaf])

    def assertAlert(self, alert: Alert, leaf: x509.Certificate, role: Role, names: list[str] | None, **kw: object) -> None:
        with self.assertRaises(AlertError) as caught:
            self.verify(leaf, role, names, **kw)
        self.assertEqual(caught.exception.alert, alert, caught.exception.detail)

    def test_good_server_and_client(self) -> None:
        server = _leaf("bank.example", Role.SERVER)
        self.assertEqual(self.verify(server, Role.SERVER, ["bank.example"]), server)
        client = _leaf("alice.example", Role.CLIENT)
        self.assertEqual(self.verify(client, Role.CLIENT, None), client)
        self.assertEqual(self.verify(client, Role.CLIENT, ["bob.example", "alice.example"]), client)

    def test_client_name_restriction(self) -> None:
        self.assertAlert(Alert.bad_certificate, _leaf("mallory.example", Role.CLIENT), Role.CLIENT, ["alice.example"])

    def test_wrong_server_name(self) -> None:
        self.assertAlert(Alert.bad_certificate, _leaf("bank.example", Role.SERVER), Role.SERVER, ["other.example"])

    def test_wrong_role(self) -> None:
        self.assertAlert(Alert.unsupported_certificate, _leaf("bank.example", Role.CLIENT), Role.SERVER, ["bank.example"])
        self.assertAlert(Alert.unsupported_certificate, _leaf("alice.example", Role.SERVER), Role.CLIENT, None)

    def test_leaf_without_eku_is_refused(self) -> None:
        key = cached_key(KeyType.EC_P256, "no-eku")
        ski = ROOT.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bank.example")]))
            .issuer_name(ROOT.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(hours=1))
            .not_valid_after(NOW + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("bank.example")]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(ROOT_KEY, hashes.SHA256())
        )
        # cryptography's verifiers accept a leaf without EKU; PeerVerifier requires one.
        self.assertAlert(Alert.unsupported_certificate, leaf, Role.SERVER, ["bank.example"])
        self.assertAlert(Alert.unsupported_certificate, leaf, Role.CLIENT, None)

    def test_unknown_root(self) -> None:
        leaf = issue_certificate(
            OTHER_ROOT_KEY, OTHER_ROOT, cached_key(KeyType.EC_P256, "x").public_key(),
            name="bank.example", role=Role.SERVER, days=7, now=NOW,
        )
        self.assertAlert(Alert.unknown_ca, leaf, Role.SERVER, ["bank.example"])

    def test_expired(self) -> None:
        leaf = _leaf("bank.example", Role.SERVER)
        later = NOW + datetime.timedelta(days=8)
        self.assertAlert(Alert.certificate_expired, leaf, Role.SERVER, ["bank.example"], clock=lambda: later)

    def test_revoked_with_crl(self) -> None:
        leaf = _leaf("bank.example", Role.SERVER)
        crl = build_crl(
            ROOT_KEY, ROOT, [Revocation(leaf.serial_number, NOW, x509.ReasonFlags.key_compromise)],
            now=NOW, next_update=datetime.timedelta(days=1), crl_number=1,
        )
        self.assertAlert(Alert.certificate_revoked, leaf, Role.SERVER, ["bank.example"], crl=crl)
        other = _leaf("bank.example", Role.SERVER)
        self.verify(other, Role.SERVER, ["bank.example"], crl=crl)

    def test_stale_or_foreign_crl(self) -> None:
        leaf = _leaf("bank.example", Role.SERVER)
        stale = build_crl(ROOT_KEY, ROOT, [], now=NOW - datetime.timedelta(days=3), next_update=datetime.timedelta(days=1), crl_number=1)
        self.assertAlert(Alert.certificate_unknown, leaf, Role.SERVER, ["bank.example"], crl=stale)
        foreign = build_crl(OTHER_ROOT_KEY, OTHER_ROOT, [], now=NOW, next_update=datetime.timedelta(days=1), crl_number=1)
        self.assertAlert(Alert.certificate_unknown, leaf, Role.SERVER, ["bank.example"], crl=foreign)

    def test_rsa_1024_leaf_is_refused(self) -> None:
        weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        leaf = issue_certificate(ROOT_KEY, ROOT, weak.public_key(), name="bank.example", role=Role.SERVER, days=7, now=NOW)
        self.assertAlert(Alert.bad_certificate, leaf, Role.SERVER, ["bank.example"])

    def test_empty_chain(self) -> None:
        with self.assertRaises(AlertError) as caught:
            PeerVerifier(ROOT, Role.CLIENT, clock=_clock).verify([])
        self.assertEqual(caught.exception.alert, Alert.certificate_required)


class PEMTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()

    def test_key_file_is_0600(self) -> None:
        path = self.dir / "key.pem"
        pem.write_private_key(path, cached_key(KeyType.EC_P256, "pem"))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(list(self.dir.iterdir()), [path])  # no temporary left behind

    def test_encrypted_key_needs_its_passphrase(self) -> None:
        path = self.dir / "key.pem"
        key = cached_key(KeyType.EC_P256, "pem")
        pem.write_private_key(path, key, b"correct horse")
        self.assertIn(b"ENCRYPTED", path.read_bytes())
        with self.assertRaises(pem.PEMError):
            pem.load_private_key(path)
        with self.assertRaises(pem.PEMError):
            pem.load_private_key(path, b"wrong")
        loaded = pem.load_private_key(path, b"correct horse")
        self.assertEqual(loaded.public_key().public_numbers(), key.public_key().public_numbers())  # type: ignore[union-attr]

    def test_exclusive_write_refuses_to_overwrite(self) -> None:
        path = self.dir / "key.pem"
        pem.write_private_key(path, cached_key(KeyType.EC_P256, "pem"), exclusive=True)
        with self.assertRaises(FileExistsError):
            pem.write_private_key(path, cached_key(KeyType.EC_P256, "pem2"), exclusive=True)

    def test_unacceptable_key_file_is_a_pem_error(self) -> None:
        path = self.dir / "key.pem"
        path.write_bytes(
            ed25519.Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        with self.assertRaises(pem.PEMError):
            pem.load_private_key(path)

    def test_missing_or_wrong_files(self) -> None:
        with self.assertRaises(pem.PEMError):
            pem.load_certificate(self.dir / "absent.pem")
        (self.dir / "junk.pem").write_text("not pem")
        with self.assertRaises(pem.PEMError):
            pem.load_certificate(self.dir / "junk.pem")
        with self.assertRaises(pem.PEMError):
            pem.load_crl(self.dir / "junk.pem")

    def test_certificates_round_trip(self) -> None:
        path = self.dir / "chain.pem"
        pem.write_certificates(path, [ROOT, OTHER_ROOT])
        self.assertEqual(pem.load_certificates(path), [ROOT, OTHER_ROOT])
        with self.assertRaises(pem.PEMError):
            pem.load_certificate(path)


class FingerprintTests(unittest.SynchronousTestCase):
    def test_round_trip_and_tolerated_spellings(self) -> None:
        text = fingerprint(ROOT)
        digest = parse_fingerprint(text)
        self.assertTrue(matches_fingerprint(ROOT, digest))
        self.assertFalse(matches_fingerprint(OTHER_ROOT, digest))
        colons = "SHA256:" + ":".join(digest.hex()[i : i + 2].upper() for i in range(0, 64, 2))
        self.assertEqual(parse_fingerprint(f"  {colons} "), digest)

    def test_refusals(self) -> None:
        for bad in ("", "md5:" + "00" * 16, "sha256:" + "00" * 31, "sha256:" + "zz" * 32, "00" * 32):
            with self.assertRaises(ValueError):
                parse_fingerprint(bad)


class NameTests(unittest.SynchronousTestCase):
    def test_names(self) -> None:
        self.assertEqual(check_dns_name(" Bank.Example "), "bank.example")
        self.assertEqual(check_dns_name("localhost"), "localhost")
        bad_names = ("", "*.example", "-a.example", "a-.example", "a..example", "bank.example.", "bänk.example", "a" * 64 + ".x")
        for bad in (*bad_names, "a_b.example"):
            with self.assertRaises(ValueError, msg=bad):
                check_dns_name(bad)


class SigningTests(unittest.SynchronousTestCase):
    def test_ec_and_rsa(self) -> None:
        for key_type in (KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048):
            key = cached_key(key_type, "signing")
            signature = sign_message(key, b"label: message")
            self.assertTrue(signature_is_valid(key.public_key(), signature, b"label: message"))
            self.assertFalse(signature_is_valid(key.public_key(), signature, b"label: messagE"))
            other = cached_key(key_type, "signing-other")
            self.assertFalse(signature_is_valid(other.public_key(), signature, b"label: message"))
            self.assertFalse(signature_is_valid(key.public_key(), b"\x00" * 8, b"label: message"))
