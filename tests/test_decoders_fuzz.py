"""Nothing a peer sends escapes a decoder as anything but the documented alert or refusal.

First the reproductions (a certificate, CSR or CRL whose X.509 version field was changed makes
cryptography raise ``InvalidVersion``, which is not a ``ValueError``); then hypothesis drives
every decoder of peer input with arbitrary bytes and with mutated valid encodings (bytes
flipped, inserted, deleted, truncated; DER damaged at random positions and in its version
field). Only ``AlertError`` (with a documented alert) or ``RequestRefused`` (with a documented
refusal) may come out, never another exception, and never ``internal_error`` for peer garbage.
"""

from __future__ import annotations

import datetime
import functools
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from tlsotp.alerts import Alert, AlertError
from tlsotp.handshake import ClientConnection, ConnectionFailed, Event, HandshakeComplete, ServerConnection, suite_named
from tlsotp.handshake.certificates import leaf_key, parse_chain, run_validator
from tlsotp.handshake.frames import ContentType, encode_frame, split_frame
from tlsotp.handshake.messages import (
    Certificate,
    CertificateVerify,
    ClientHello,
    Finished,
    HandshakeType,
    KeyTransport,
    ServerHello,
    split_handshake,
)
from tlsotp.otp import messages as otp
from tlsotp.party.channel import SansIOConnection, SecureChannelProtocol
from tlsotp.pki.csr import build_csr
from tlsotp.pki.keys import KeyType
from tlsotp.pki.roles import Role
from tlsotp.pki.verify import PeerVerifier
from tlsotp.ttp import wire
from tlsotp.ttp.enroll import accept_crl, accept_issued
from tlsotp.ttp.renewal_proof import sign_renewal
from tlsotp.ttp.wire import Refusal, RequestRefused

from tests.der_mutations import with_version
from tests.test_ttp_fixtures import TTPFixture, cached_key, csr_der, enroll_request
from tests.vectors import fixtures
from tests.vectors.harness import Pair, connect, handshake_type, make_configs, parse_handshake_frame, rewrite

DER = serialization.Encoding.DER
S384 = suite_named("TLSOTP_ECDHE_X25519_ECDSA_WITH_AES_256_GCM_SHA384")
RSA_T = suite_named("TLSOTP_RSA_OAEP_WITH_AES_256_GCM_SHA384")


def failures(events: list[Event]) -> list[ConnectionFailed]:
    return [e for e in events if isinstance(e, ConnectionFailed)]


def replace_leaf(change: Callable[[bytes], bytes]) -> Callable[[Certificate], Certificate]:
    return lambda message: Certificate((change(message.chain[0]), *message.chain[1:]))


class VersionFieldReproductionTests(SynchronousTestCase):
    """Each of these failed (an InvalidVersion traceback or internal_error) before the fix."""

    def test_server_refuses_a_client_certificate_with_a_bad_version(self) -> None:
        pair = connect(*make_configs(S384), tamper=rewrite("c2s", Certificate, replace_leaf(with_version)))
        (failed,) = failures(pair.server_events)
        self.assertEqual(failed.alert, Alert.bad_certificate, failed.detail)
        self.assertTrue(pair.server.closed)

    def test_client_refuses_a_server_certificate_with_a_bad_version(self) -> None:
        pair = connect(*make_configs(S384), tamper=rewrite("s2c", Certificate, replace_leaf(with_version)))
        (failed,) = failures(pair.client_events)
        self.assertEqual(failed.alert, Alert.bad_certificate, failed.detail)
        self.assertTrue(pair.client.closed)

    def test_traced_certificate_with_a_bad_version_is_still_bad_certificate(self) -> None:
        # The trace summary parses certificates too (tlsotp client --trace).
        seen: list[Any] = []
        configs = make_configs(S384, client_observer=seen.append, server_observer=seen.append)
        pair = connect(*configs, tamper=rewrite("s2c", Certificate, replace_leaf(with_version)))
        (failed,) = failures(pair.client_events)
        self.assertEqual(failed.alert, Alert.bad_certificate, failed.detail)

    def test_parse_chain_maps_a_bad_version_to_bad_certificate(self) -> None:
        der = fixtures.identity("server", "ec-p256").chain[0].public_bytes(DER)
        for version in (1, 3, 7, 0x7F):
            with self.assertRaises(AlertError) as caught:
                parse_chain([with_version(der, version)])
            self.assertEqual(caught.exception.alert, Alert.bad_certificate)


class TTPFixtureCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.ttp = TTPFixture(Path(self.mktemp()))
        self.addCleanup(self.ttp.close)
        self.key = cached_key(KeyType.EC_P256, "decoders-requester")

    def refusal(self, payload: bytes) -> wire.Refused:
        outcome = self.ttp.issuer.handle(payload)
        self.assertNotIn("\n", outcome.summary)
        reply = outcome.reply
        assert isinstance(reply, wire.Refused), reply
        return reply

    def enrolled(self) -> x509.Certificate:
        token = self.ttp.token("bank.example", Role.SERVER)
        reply = self.ttp.issuer.handle(wire.encode(enroll_request(token, "bank.example", Role.SERVER, self.key))).reply
        assert isinstance(reply, wire.Issued), reply
        return x509.load_der_x509_certificate(reply.cert_der)

    def renew_payload(self, cert_der: bytes, csr: bytes | None = None) -> bytes:
        csr = csr if csr is not None else csr_der(self.key, "bank.example")
        nonce = secrets.token_bytes(wire.NONCE_BYTES)
        ts = int(self.ttp.clock.now.timestamp())
        return wire.encode(wire.RenewRequest(cert_der, csr, nonce, ts, sign_renewal(self.key, cert_der, csr, nonce, ts)))


class TTPVersionFieldReproductionTests(TTPFixtureCase):
    def test_enrollment_csr_with_a_bad_version_is_bad_csr(self) -> None:
        token = self.ttp.token("bank.example", Role.SERVER)
        bad_csr = with_version(csr_der(self.key, "bank.example"))
        reply = self.refusal(wire.encode(enroll_request(token, "bank.example", Role.SERVER, self.key, csr=bad_csr)))
        self.assertEqual(reply.code, Refusal.bad_csr, reply.detail)

    def test_renewal_certificate_with_a_bad_version_is_not_renewable(self) -> None:
        cert_der = self.enrolled().public_bytes(DER)
        reply = self.refusal(self.renew_payload(with_version(cert_der)))
        self.assertEqual(reply.code, Refusal.not_renewable, reply.detail)

    def test_renewal_csr_with_a_bad_version_is_bad_csr(self) -> None:
        cert_der = self.enrolled().public_bytes(DER)
        reply = self.refusal(self.renew_payload(cert_der, with_version(csr_der(self.key, "bank.example"))))
        self.assertEqual(reply.code, Refusal.bad_csr, reply.detail)


class RequesterVersionFieldReproductionTests(TTPFixtureCase):
    """The requester parses the TTP's replies: root, certificate and CRL DER."""

    def test_issued_certificate_with_a_bad_version(self) -> None:
        cert_der = self.enrolled().public_bytes(DER)
        for reply in (
            wire.Issued(self.ttp.ca.root_der, with_version(cert_der)),
            wire.Issued(with_version(self.ttp.ca.root_der), cert_der),
        ):
            with self.assertRaises(AlertError) as caught:
                accept_issued(reply, self.ttp.ca.root, self.key, "bank.example", Role.SERVER, self.ttp.clock.now)
            self.assertEqual(caught.exception.alert, Alert.decode_error)

    def test_crl_with_a_bad_version(self) -> None:
        reply = wire.decode_reply(wire.encode(self.ttp.issuer.handle(wire.encode(wire.CRLRequest())).reply))
        assert isinstance(reply, wire.CRLReply)
        accept_crl(reply, self.ttp.ca.root, self.ttp.clock.now)  # the undamaged one is accepted
        with self.assertRaises(AlertError) as caught:
            accept_crl(wire.CRLReply(reply.root_der, with_version(reply.crl_der)), self.ttp.ca.root, self.ttp.clock.now)
        self.assertEqual(caught.exception.alert, Alert.decode_error)


class _BuggyServer(SecureChannelProtocol):
    """A server shell whose handler has a bug (it raises), to show what the shell does then."""

    peer_role = "client"

    def __init__(self, where: str) -> None:
        self.where = where
        self.outcomes: list[AlertError | None] = []
        super().__init__()

    def make_connection(self) -> SansIOConnection:
        return ServerConnection(make_configs(S384)[1])

    def handshake_complete(self, event: HandshakeComplete) -> None:
        if self.where == "handshake_complete":
            raise KeyError("bug in handshake_complete")

    def application_data(self, data: bytes) -> None:
        raise ZeroDivisionError("bug in application_data")

    def failed(self, error: AlertError, *, sent: bool) -> None:
        _shell_log.warn("session ended: {error}", error=str(error))
        self.outcomes.append(error)


class _Client(SecureChannelProtocol):
    peer_role = "server"

    def __init__(self) -> None:
        self.outcomes: list[AlertError | None] = []
        super().__init__()

    def make_connection(self) -> SansIOConnection:
        return ClientConnection(make_configs(S384)[0])

    def start(self) -> None:
        assert isinstance(self.connection, ClientConnection)
        self.connection.initiate()

    def handshake_complete(self, event: HandshakeComplete) -> None:
        self.connection.send_application_data(b"request")

    def application_data(self, data: bytes) -> None:
        pass

    def failed(self, error: AlertError, *, sent: bool) -> None:
        self.outcomes.append(error)

    def closed_cleanly(self) -> None:
        self.outcomes.append(None)


_shell_log = Logger()


class ChannelShellTests(SynchronousTestCase):
    """A bug in a handler after a frame was decoded costs one session: an internal_error alert
    and one log line, never "Unhandled Error" (trial fails a test that logs one)."""

    def check(self, where: str) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        server, client = _BuggyServer(where), _Client()
        pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client))
        pump.flush()
        (error,) = server.outcomes
        assert error is not None
        self.assertEqual(error.alert, Alert.internal_error)
        self.assertIn("bug in " + where, str(error))
        (received,) = client.outcomes
        assert received is not None
        self.assertEqual(received.alert, Alert.internal_error)
        self.assertEqual([e for e in events if "log_failure" in e], [])
        self.assertEqual(len(events), 1, [formatEvent(e) for e in events])

    def test_bug_in_handshake_complete(self) -> None:
        self.check("handshake_complete")

    def test_bug_in_application_data(self) -> None:
        self.check("application_data")
