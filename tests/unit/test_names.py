"""Names are checked by full match, with no control character anywhere, at every edge.

``^...$`` with ``re.match`` let ``bank\\n.example`` through (``$`` matches before a trailing
newline): the operator could mint it and the TTP issued a certificate with a newline in it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st
from twisted.python import usage
from twisted.trial import unittest

from tests.credentials import cached_key
from tests.test_ttp_fixtures import TTPFixture, enroll_request
from tlsotp.commands.client import ClientOptions
from tlsotp.commands.server_daemon import Options as ServerOptions
from tlsotp.pki.csr import CSRNameMismatch, check_csr
from tlsotp.pki.keys import KeyType
from tlsotp.pki.names import check_dns_name, check_peer_name
from tlsotp.pki.roles import Role
from tlsotp.pki.verify import PeerVerifier
from tlsotp.ttp import wire
from tlsotp.ttp.wire import Refusal

LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
NAME = st.lists(LABEL, min_size=1, max_size=4).map(".".join)
# Everything str.isprintable refuses: C0/C1 controls (newline, CR, NUL, NEL...), format characters
# (zero-width space, BOM...), line and paragraph separators, and every non-ASCII space.
CONTROL = st.characters(categories=["Cc", "Cf", "Zl", "Zp"]) | st.sampled_from("\n\r\t\x0b\x0c\x00\x85\u2028\u00a0")


ASCII_CONTROL = st.characters(categories=["Cc"], max_codepoint=127)  # what a DNSName (A-labels) can carry


@st.composite
def name_with_control(draw: st.DrawFn, control: st.SearchStrategy[str] = CONTROL) -> str:
    """A valid name with one control character put at any position: before, inside or after any label."""
    name = draw(NAME)
    position = draw(st.integers(0, len(name)))
    return name[:position] + draw(control) + name[position:]


def csr_for(cn: str, sans: list[str]) -> x509.CertificateSigningRequest:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False)
        .sign(cached_key(KeyType.EC_P256, "names"), hashes.SHA256())
    )


class NameCheckTests(unittest.SynchronousTestCase):
    def test_the_reproduction(self) -> None:
        for bad in ("bank\n.example", "bank.example\n", "\nbank.example", "bank.exam\x00ple", "bank.example\r\n"):
            with self.assertRaises(ValueError, msg=repr(bad)):
                check_dns_name(bad)
            with self.assertRaises(ValueError, msg=repr(bad)):
                check_peer_name(bad)

    @given(name_with_control())
    def test_a_control_character_anywhere_is_refused(self, text: str) -> None:
        for check in (check_dns_name, check_peer_name):
            with self.assertRaises(ValueError) as caught:
                check(text)
            message = str(caught.exception)
            self.assertNotIn("\n", message)  # one line, the character shown escaped
            self.assertTrue(message.isprintable(), message)

    @given(NAME, st.text(" ", max_size=2), st.text(" ", max_size=2), st.booleans())
    def test_operator_names_are_normalised_peer_names_are_not(self, name: str, before: str, after: str, upper: bool) -> None:
        typed = before + (name.upper() if upper else name) + after
        self.assertEqual(check_dns_name(typed), name)
        if typed == name:
            self.assertEqual(check_peer_name(typed), name)
        else:
            with self.assertRaises(ValueError):
                check_peer_name(typed)

    @given(st.text(max_size=30))
    def test_whatever_is_accepted_is_plain_ascii_labels(self, text: str) -> None:
        try:
            name = check_dns_name(text)
        except ValueError:
            return
        self.assertTrue(set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789.-"), repr(name))
        self.assertEqual(check_peer_name(name), name)


class CSRNameTests(unittest.SynchronousTestCase):
    def check_refused(self, csr: x509.CertificateSigningRequest, bad: str) -> None:
        # Even when the authorised name is the same string (a token minted before names were checked).
        for authorised in (bad, "bank.example"):
            with self.assertRaises(CSRNameMismatch):
                check_csr(csr, authorised)

    @given(name_with_control(ASCII_CONTROL))
    def test_a_control_character_in_the_san_is_refused(self, bad: str) -> None:
        self.check_refused(csr_for("bank.example", [bad]), bad)

    @given(name_with_control())
    def test_a_control_character_in_the_subject_is_refused(self, bad: str) -> None:
        self.check_refused(csr_for(bad, ["bank.example"]), bad)

    @given(name_with_control(ASCII_CONTROL))
    def test_the_same_bad_name_in_both(self, bad: str) -> None:
        self.check_refused(csr_for(bad, [bad]), bad)


class TTPRefusesNewlineNamesTests(unittest.SynchronousTestCase):
    """At the TTP itself: the Issuer decides on the request bytes as they came off the wire."""

    def setUp(self) -> None:
        self.ttp = TTPFixture(Path(self.mktemp()))
        self.addCleanup(self.ttp.close)
        self.key = cached_key(KeyType.EC_P256, "names-ttp")

    def refusal(self, request: wire.EnrollRequest) -> wire.Refused:
        reply = self.ttp.issuer.handle(wire.encode(request)).reply
        assert isinstance(reply, wire.Refused), reply
        return reply

    def test_a_token_for_a_newline_name_issues_nothing(self) -> None:
        # What the old 'tlsotp ttp token' let an operator mint.
        name = "bank\n.example"
        token = self.ttp.token(name, Role.SERVER)
        reply = self.refusal(enroll_request(token, name, Role.SERVER, self.key))
        self.assertIn(reply.code, (Refusal.name_mismatch, Refusal.bad_csr))
        self.assertEqual(self.ttp.store.list_certificates(), [])

    def test_a_csr_with_a_newline_in_its_san_or_subject(self) -> None:
        for cn, san in (("bank.example", "bank.example\n"), ("bank.example\n", "bank.example"), ("bank\n.example", "bank\n.example")):
            token = self.ttp.token("bank.example", Role.SERVER)
            csr = csr_for(cn, [san]).public_bytes(serialization.Encoding.DER)
            reply = self.refusal(enroll_request(token, "bank.example", Role.SERVER, self.key, csr=csr))
            self.assertEqual(reply.code, Refusal.name_mismatch, reply.detail)


class OptionNameTests(unittest.SynchronousTestCase):
    def test_server_name_and_allow_list(self) -> None:
        base = ["--data-dir", tempfile.mkdtemp(), "--ca-fingerprint", "sha256:" + "00" * 32]
        for args in (["--name", "bank\n.example"], ["--name", "bank.example", "--allow-client", "alice.example\n"]):
            with self.assertRaises(usage.UsageError, msg=args):
                ServerOptions().parseOptions(base + args)
        with self.assertRaises(usage.UsageError):
            ClientOptions().parseOptions(base + ["--server-name", "bank\n.example"])
        with self.assertRaises(usage.UsageError):
            ClientOptions().parseOptions(base + ["--server-name", "bank.example", "--name", "alice\n.example"])

    def test_server_factory_allow_list(self) -> None:
        from tests.credentials import test_ca
        from tlsotp.services.bank_server import OTPServerFactory, ServerIdentity

        server = test_ca().issue("bank.example", Role.SERVER)
        identity = ServerIdentity(server.key, server.chain, server.root)
        with self.assertRaises(ValueError):
            OTPServerFactory(identity, None, allowed_clients=["alice\n.example"])  # type: ignore[arg-type]
        factory = OTPServerFactory(identity, None, allowed_clients=[" Alice.Example"])  # type: ignore[arg-type]
        self.assertEqual(factory.allowed_clients, {"alice.example"})

    def test_client_settings_server_name(self) -> None:
        from tests.credentials import test_ca
        from tlsotp.services.otp_client import ClientSettings

        client = test_ca().issue("alice.example", Role.CLIENT)
        with self.assertRaises(ValueError):
            ClientSettings(client.key, client.chain, client.root, "bank\n.example", None)
        self.assertEqual(ClientSettings(client.key, client.chain, client.root, "Bank.Example", None).server_name, "bank.example")

    def test_verifier_expected_names(self) -> None:
        root = TTPFixture(Path(tempfile.mkdtemp())).ca.root
        with self.assertRaises(ValueError):
            PeerVerifier(root, Role.SERVER, expected_names=["bank\n.example"])
        with self.assertRaises(ValueError):
            PeerVerifier(root, Role.CLIENT, expected_names=["alice.example", "bob.example\n"])
