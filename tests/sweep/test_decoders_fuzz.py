"""Nothing a peer sends escapes a decoder as anything but the documented alert or refusal.

First the reproductions (a certificate, CSR or CRL whose X.509 version field was changed makes
cryptography raise ``InvalidVersion``, which is not a ``ValueError``); then hypothesis drives
every decoder of peer input with arbitrary bytes and with mutated valid encodings (bytes
flipped, inserted, deleted, truncated; DER damaged at random positions and in its version
field). Only ``AlertError`` (with a documented alert) or ``RequestRefused`` (with a documented
refusal) may come out, never another exception, and never ``internal_error`` for peer garbage.
"""

from __future__ import annotations

import dataclasses
import functools
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from tests.der_mutations import with_version
from tests.test_ttp_fixtures import TTPFixture, cached_key, csr_der, enroll_request
from tests.vectors import fixtures
from tests.vectors.harness import connect, handshake_type, make_configs, rewrite
from tlsotp.alerts import Alert, AlertError
from tlsotp.handshake import ClientConnection, ConnectionFailed, Event, HandshakeComplete, ServerConnection, suite_named
from tlsotp.handshake.certificates import leaf_key, parse_chain, run_validator
from tlsotp.handshake.frames import ContentType, encode_frame, split_frame
from tlsotp.handshake.key_exchange import ecdh_shared_secret, generate_ephemeral_key, load_key_share, unwrap_secret
from tlsotp.handshake.limits import TRANSPORTED_SECRET_LENGTH
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
from tlsotp.handshake.signatures import verify
from tlsotp.handshake.suites import Group, HashAlgorithm
from tlsotp.otp import messages as otp
from tlsotp.pki.csr import build_csr
from tlsotp.pki.keys import KeyType
from tlsotp.pki.roles import Role
from tlsotp.services.channel import SansIOConnection, SecureChannelProtocol
from tlsotp.services.enrollment import accept_crl, accept_issued
from tlsotp.ttp import wire
from tlsotp.ttp.renewal_proof import sign_renewal
from tlsotp.ttp.wire import Refusal, RequestRefused

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
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
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


# -- generation ---------------------------------------------------------------------------------

#: The handshake layer's alerts for what a peer sends (docs/protocol.rst, "Alerts"); never
#: internal_error, which is for local faults only.
PEER_ALERTS = frozenset(Alert) - {Alert.internal_error, Alert.close_notify}
CERTIFICATE_ALERTS = frozenset(
    {
        Alert.bad_certificate,
        Alert.unsupported_certificate,
        Alert.certificate_revoked,
        Alert.certificate_expired,
        Alert.certificate_unknown,
        Alert.unknown_ca,
        Alert.certificate_required,
    }
)
CSR_REFUSALS = frozenset({Refusal.bad_csr, Refusal.bad_signature, Refusal.weak_key, Refusal.name_mismatch})


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` with 1 to 4 random edits: bit flips, byte sets, insertions, deletions, truncation.

    Every edit draws the same values whatever the input's length (positions are taken modulo
    it), so inputs that vary from run to run (ECDSA signatures are randomised) still give
    hypothesis a consistent search space.
    """
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        position = draw(st.integers(0, 1 << 16))
        value = draw(st.integers(0, 255))
        extra = draw(st.binary(min_size=1, max_size=8))
        if op == "insert" or not data:
            at = position % (len(data) + 1)
            data[at:at] = extra
            continue
        at = position % len(data)
        if op == "flip":
            data[at] ^= 1 << (value % 8)
        elif op == "set":
            data[at] = value
        elif op == "delete":
            del data[at : at + 1 + value % 8]
        else:
            del data[at:]
    return bytes(data)


def der_variants(original: bytes) -> st.SearchStrategy[bytes]:
    """Damaged DER: random edits anywhere, or a changed version field (any one-byte value)."""
    return st.one_of(mutated(original), st.integers(0, 0x7F).map(lambda v: with_version(original, v)))


def inputs(*valid: bytes) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, and mutations of any of the valid encodings."""
    return st.one_of(st.binary(max_size=600), st.sampled_from(valid).flatmap(mutated))


@functools.lru_cache(maxsize=None)
def captured(suite_name: str) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """Every frame of one complete session (request, answer, close_notify both ways)."""
    server_key = "rsa-2048" if "RSA_OAEP" in suite_name or "RSA_PSS" in suite_name else "ec-p256"
    pair = connect(*make_configs(suite_named(suite_name), server_key=server_key))
    pair.client.send_application_data(otp.encode(otp.OTPRequest("Rs 1,00,000 to a friend")))
    pair.server.send_application_data(b"answer")
    pair.server.close()
    pair.pump()
    return tuple(f for d, f in pair.wire if d == "c2s"), tuple(f for d, f in pair.wire if d == "s2c")


def _all_frames() -> tuple[bytes, ...]:
    c2s, s2c = captured(S384.name)
    rsa_c2s, rsa_s2c = captured(RSA_T.name)
    return c2s + s2c + rsa_c2s + rsa_s2c


def fresh_machine(suite_name: str, at_server: bool) -> ClientConnection | ServerConnection:
    configs = make_configs(suite_named(suite_name), server_key="rsa-2048" if suite_name == RSA_T.name else "ec-p256")
    if at_server:
        return ServerConnection(configs[1])
    client = ClientConnection(configs[0])
    client.initiate()
    return client


@functools.lru_cache(maxsize=None)
def replayable(suite_name: str, at_server: bool) -> int:
    """How many captured frames a fresh deterministic machine accepts again (RSA-OAEP is
    randomised, so a client's replayed session diverges at the server's Finished)."""
    c2s, s2c = captured(suite_name)
    machine = fresh_machine(suite_name, at_server)
    for count, frame in enumerate(c2s if at_server else s2c):
        if failures(machine.receive_frame(frame)):
            return count
    return len(c2s if at_server else s2c)


BODY_DECODERS: dict[HandshakeType, Callable[[bytes], object]] = {
    HandshakeType.client_hello: ClientHello.decode_body,
    HandshakeType.server_hello: ServerHello.decode_body,
    HandshakeType.certificate: Certificate.decode_body,
    HandshakeType.certificate_verify: CertificateVerify.decode_body,
    HandshakeType.key_transport: KeyTransport.decode_body,
    HandshakeType.finished: Finished.decode_body,
}


class HandshakeDecoderFuzzTests(SynchronousTestCase):
    def assertOnlyAlerts(self, decode: Callable[[], object], allowed: frozenset[Alert] = PEER_ALERTS) -> None:
        try:
            decode()
        except AlertError as exc:
            self.assertIn(exc.alert, allowed, str(exc))

    @given(st.data())
    def test_frame_and_message_decoders(self, data: st.DataObject) -> None:
        frame = data.draw(inputs(*_all_frames()))

        def decode() -> None:
            content_type, body = split_frame(frame)
            if content_type is ContentType.handshake:
                msg_type, msg_body = split_handshake(body)
                message = BODY_DECODERS[msg_type](msg_body)
                message.trace_fields()  # type: ignore[attr-defined]

        self.assertOnlyAlerts(decode)

    @given(st.sampled_from(sorted(BODY_DECODERS)), st.data())
    def test_every_body_decoder_on_arbitrary_and_mutated_bodies(self, msg_type: HandshakeType, data: st.DataObject) -> None:
        bodies = [split_handshake(split_frame(f)[1])[1] for f in _all_frames() if handshake_type(f) is msg_type]
        body = data.draw(st.one_of(st.binary(max_size=400), st.sampled_from(bodies).flatmap(mutated)))
        self.assertOnlyAlerts(lambda: BODY_DECODERS[msg_type](body))

    @given(st.sampled_from([S384.name, RSA_T.name]), st.booleans(), st.data())
    def test_a_connection_never_raises_on_a_damaged_or_injected_frame(
        self, suite_name: str, at_server: bool, data: st.DataObject
    ) -> None:
        """Honest frames up to a point, then one damaged, arbitrary or misplaced frame: the
        receiving machine answers with an alert (never internal_error) or carries on."""
        c2s, s2c = captured(suite_name)
        incoming = c2s if at_server else s2c
        stop = data.draw(st.integers(0, replayable(suite_name, at_server)))
        machine = fresh_machine(suite_name, at_server)
        events: list[Event] = []
        for frame in incoming[:stop]:
            events.extend(machine.receive_frame(frame))
        self.assertEqual(failures(events), [])
        bad = data.draw(st.one_of(mutated(incoming[min(stop, len(incoming) - 1)]), inputs(*_all_frames())))
        for event in failures(machine.receive_frame(bad)):
            self.assertIn(event.alert, PEER_ALERTS, event.detail)


def _fixture_der() -> dict[str, bytes]:
    server = fixtures.identity("server", "ec-p256")
    rsa_client = fixtures.identity("client", "rsa-2048")
    return {
        "ec-leaf": server.chain[0].public_bytes(DER),
        "rsa-leaf": rsa_client.chain[0].public_bytes(DER),
        "root": fixtures.root().public_bytes(DER),
        "csr": build_csr(server.key, fixtures.SERVER_NAME).public_bytes(DER),
        "crl": fixtures.crl_revoking(rsa_client.chain[0]).public_bytes(DER),
    }


DER_SAMPLES = _fixture_der()


class CertificateFuzzTests(SynchronousTestCase):
    """Damaged certificates through the whole peer validation, as the handshake runs it."""

    @given(st.sampled_from(["ec-leaf", "rsa-leaf", "root"]), st.booleans(), st.data())
    def test_damaged_chain_through_parse_validate_and_leaf_key(self, which: str, as_client: bool, data: st.DataObject) -> None:
        damaged = data.draw(der_variants(DER_SAMPLES[which]))
        chain_der = data.draw(st.sampled_from([[damaged], [damaged, DER_SAMPLES["root"]], [DER_SAMPLES["ec-leaf"], damaged]]))
        crl: x509.CertificateRevocationList | None = None
        crl_der = data.draw(st.one_of(st.none(), st.just(DER_SAMPLES["crl"]), der_variants(DER_SAMPLES["crl"])))
        if crl_der is not None:
            try:  # the CRL loaded here comes from accept_crl in real runs; fuzzed separately
                crl = x509.load_der_x509_crl(crl_der)
            except (ValueError, x509.InvalidVersion):
                pass
        verifier = fixtures.client_verifier(crl) if as_client else fixtures.server_verifier(crl)
        try:
            chain = parse_chain(chain_der)
            run_validator(verifier, chain)
            leaf_key(chain)
        except AlertError as exc:
            self.assertIn(exc.alert, CERTIFICATE_ALERTS, str(exc))

    @given(st.data())
    def test_damaged_certificate_in_a_handshake(self, data: st.DataObject) -> None:
        damaged = data.draw(der_variants(DER_SAMPLES["ec-leaf"]))
        direction = data.draw(st.sampled_from(["c2s", "s2c"]))
        pair = connect(*make_configs(S384), tamper=rewrite(direction, Certificate, replace_leaf(lambda _: damaged)))
        refusing = pair.server_events if direction == "c2s" else pair.client_events
        for event in failures(refusing):
            self.assertIn(event.alert, PEER_ALERTS, event.detail)


class TTPFuzzTests(TTPFixtureCase):
    """The TTP answers any bytes with a typed refusal, and peer garbage never with internal_error."""

    def outcome_reply(self, payload: bytes) -> wire.Reply:
        outcome = self.ttp.issuer.handle(payload)
        self.assertNotIn("\n", outcome.summary)
        if isinstance(outcome.reply, wire.Refused):
            self.assertNotEqual(outcome.reply.code, Refusal.internal_error, outcome.summary)
        return outcome.reply

    @given(st.data())
    def test_arbitrary_and_mutated_requests(self, data: st.DataObject) -> None:
        token = self.ttp.token("bank.example", Role.SERVER)
        valid = [
            wire.encode(enroll_request(token, "bank.example", Role.SERVER, self.key)),
            wire.encode(wire.CRLRequest()),
            self.renew_payload(DER_SAMPLES["ec-leaf"]),  # a certificate this TTP never issued
            self.renew_payload(self.enrolled().public_bytes(DER)),  # reaches the signature and CSR checks
        ]
        reply = self.outcome_reply(data.draw(inputs(*valid)))
        self.assertIsInstance(reply, (wire.Refused, wire.CRLReply, wire.Issued))

    @given(st.data())
    def test_request_decoder_raises_only_decode_refusals(self, data: st.DataObject) -> None:
        token = self.ttp.token("bank.example", Role.SERVER)
        valid = [
            wire.encode(enroll_request(token, "bank.example", Role.SERVER, self.key)),
            wire.encode(wire.CRLRequest()),
            self.renew_payload(DER_SAMPLES["ec-leaf"]),
        ]
        try:
            wire.decode_request(data.draw(inputs(*valid)))
        except RequestRefused as exc:
            self.assertIn(exc.code, {Refusal.decode_error, Refusal.unknown_message}, exc.detail)

    @given(st.data())
    def test_damaged_csr_in_an_enrollment(self, data: st.DataObject) -> None:
        # The proof is computed over the damaged CSR, so the CSR checks themselves are reached.
        token = self.ttp.token("bank.example", Role.SERVER)
        csr = data.draw(der_variants(csr_der(self.key, "bank.example")))
        reply = self.outcome_reply(wire.encode(enroll_request(token, "bank.example", Role.SERVER, self.key, csr=csr)))
        if isinstance(reply, wire.Refused):
            # An empty CSR is refused by the wire format's bound before any CSR check.
            self.assertIn(reply.code, CSR_REFUSALS | {Refusal.decode_error} if not csr else CSR_REFUSALS, reply.detail)

    @given(st.data())
    def test_version_corrupted_csr_is_bad_csr(self, data: st.DataObject) -> None:
        token = self.ttp.token("bank.example", Role.SERVER)
        csr = with_version(csr_der(self.key, "bank.example"), data.draw(st.integers(1, 0x7F)))
        reply = self.outcome_reply(wire.encode(enroll_request(token, "bank.example", Role.SERVER, self.key, csr=csr)))
        assert isinstance(reply, wire.Refused), reply
        self.assertEqual(reply.code, Refusal.bad_csr, reply.detail)

    @settings(max_examples=30)
    @given(st.data())
    def test_damaged_certificate_in_a_renewal(self, data: st.DataObject) -> None:
        cert_der = self.enrolled().public_bytes(DER)
        damaged = data.draw(der_variants(cert_der))
        reply = self.outcome_reply(self.renew_payload(damaged))
        if damaged != cert_der:
            assert isinstance(reply, wire.Refused), reply
            # An empty certificate is refused by the wire format's bound, before parsing.
            self.assertEqual(reply.code, Refusal.not_renewable if damaged else Refusal.decode_error, reply.detail)


class RequesterFuzzTests(TTPFixtureCase):
    """What the requester does with the TTP's reply: decode_reply, then accept_issued/accept_crl."""

    def accept(self, payload: bytes, cert: x509.Certificate) -> None:
        from tlsotp.services.enrollment import EnrollmentRefused

        try:
            reply = wire.decode_reply(payload)
            if isinstance(reply, wire.CRLReply):
                accept_crl(reply, self.ttp.ca.root, self.ttp.clock.now)
            else:
                accept_issued(reply, self.ttp.ca.root, self.key, "bank.example", Role.SERVER, self.ttp.clock.now)
        except AlertError as exc:
            self.assertIn(exc.alert, PEER_ALERTS, str(exc))
        except EnrollmentRefused:
            pass

    @settings(max_examples=40)
    @given(st.data())
    def test_arbitrary_and_mutated_replies(self, data: st.DataObject) -> None:
        cert = self.valid_cert()
        crl_reply = self.ttp.issuer.handle(wire.encode(wire.CRLRequest())).reply
        valid = [
            wire.encode(wire.Issued(self.ttp.ca.root_der, cert.public_bytes(DER))),
            wire.encode(crl_reply),
            wire.encode(wire.Refused(Refusal.bad_csr, "no")),
        ]
        self.accept(data.draw(inputs(*valid)), cert)

    @settings(max_examples=40)
    @given(st.sampled_from(["root", "cert", "crl"]), st.data())
    def test_damaged_der_inside_replies(self, which: str, data: st.DataObject) -> None:
        cert = self.valid_cert()
        crl_reply = self.ttp.issuer.handle(wire.encode(wire.CRLRequest())).reply
        assert isinstance(crl_reply, wire.CRLReply)
        root_der, cert_der, crl_der = self.ttp.ca.root_der, cert.public_bytes(DER), crl_reply.crl_der
        if which == "root":
            root_der = data.draw(der_variants(root_der))
        elif which == "cert":
            cert_der = data.draw(der_variants(cert_der))
        else:
            crl_der = data.draw(der_variants(crl_der))
        message = wire.CRLReply(root_der, crl_der) if which == "crl" or data.draw(st.booleans()) else wire.Issued(root_der, cert_der)
        self.accept(wire.encode(message), cert)

    def valid_cert(self) -> x509.Certificate:
        if not hasattr(self, "_cert"):
            self._cert = self.enrolled()
        return self._cert


def _otp_samples() -> tuple[bytes, ...]:
    return tuple(
        otp.encode(m)
        for m in (
            otp.OTPRequest("Rs 1,00,000 to a friend"),
            otp.OTPGrant(b"\x01" * 16, "Rs 5", "123456", 1_700_000_000, otp.otp_message("Rs 5", "123456")),
            otp.ConfirmRequest("Rs 5", "123456"),
            otp.ConfirmResult(otp.ConfirmStatus.wrong_code, 2),
        )
    )


class ApplicationAndRecordFuzzTests(SynchronousTestCase):
    @given(inputs(*_otp_samples()))
    def test_otp_messages_decode_only_to_alerts(self, data: bytes) -> None:
        try:
            otp.decode(data)
        except AlertError as exc:
            self.assertIn(exc.alert, {Alert.decode_error, Alert.unexpected_message}, str(exc))

    @given(st.sampled_from([S384.name, RSA_T.name]), st.booleans(), st.data())
    def test_protected_records_and_alerts_after_the_handshake(self, suite_name: str, at_server: bool, data: st.DataObject) -> None:
        """Damaged application records and protected alerts: bad_record_mac or another alert."""
        c2s, s2c = captured(suite_name)
        incoming = c2s if at_server else s2c
        done = replayable(suite_name, at_server)
        protected = [f for f in incoming[:done] if f[0] in (ContentType.application_data, ContentType.alert)]
        if not protected:
            return  # a randomised RSA-OAEP client session diverges before any protected record
        machine = fresh_machine(suite_name, at_server)
        first_protected = incoming.index(protected[0])
        for frame in incoming[:first_protected]:
            self.assertEqual(failures(machine.receive_frame(frame)), [])
        bad = data.draw(st.one_of(st.sampled_from(protected).flatmap(mutated), st.binary(max_size=64).map(
            lambda b: encode_frame(data.draw(st.sampled_from([ContentType.application_data, ContentType.alert])), b)
        )))
        for event in failures(machine.receive_frame(bad)):
            self.assertIn(event.alert, PEER_ALERTS, event.detail)


class KeyExchangeAndSignatureFuzzTests(SynchronousTestCase):
    """The primitives that take a peer's bytes: key shares, RSA-OAEP ciphertexts, signatures."""

    @given(st.sampled_from(list(Group)), st.binary(max_size=120), st.booleans())
    def test_key_shares_are_illegal_parameter_or_usable(self, group: Group, data: bytes, exact_length: bool) -> None:
        if exact_length:  # mostly the right length, so the point decoding itself is exercised
            data = (data * 97)[: {Group.X25519: 32, Group.P256: 65, Group.P384: 97}[group]]
        try:
            share = load_key_share(group, data)
            ecdh_shared_secret(generate_ephemeral_key(group), share)
        except AlertError as exc:
            self.assertEqual(exc.alert, Alert.illegal_parameter, str(exc))

    @settings(max_examples=30)
    @given(st.binary(max_size=300))
    def test_rsa_key_transport_never_fails_visibly(self, ciphertext: bytes) -> None:
        key = fixtures.identity("server", "rsa-2048").key
        assert isinstance(key, rsa.RSAPrivateKey)
        replacement = b"\x07" * TRANSPORTED_SECRET_LENGTH
        self.assertEqual(unwrap_secret(key, ciphertext, replacement), replacement)

    @given(st.sampled_from(["ec-p256", "ec-p384", "rsa-2048"]), st.sampled_from(list(HashAlgorithm)), st.binary(max_size=600))
    def test_signatures_are_decrypt_error(self, key_type: str, hash_: HashAlgorithm, signature: bytes) -> None:
        public_key = fixtures.identity("server", key_type).key.public_key()
        assert isinstance(public_key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey))
        with self.assertRaises(AlertError) as caught:
            verify(public_key, hash_, signature, b"content", "server")
        self.assertEqual(caught.exception.alert, Alert.decrypt_error)


class ConnectionBackstopTests(SynchronousTestCase):
    def test_a_local_fault_while_handling_a_frame_is_internal_error_not_an_exception(self) -> None:
        """What no peer can cause (here: the random source fails) still ends in an alert."""

        def broken_random(n: int) -> bytes:
            raise OSError("entropy source unavailable")

        client_config, server_config = make_configs(S384)
        server = ServerConnection(dataclasses.replace(server_config, random_bytes=broken_random))
        client = ClientConnection(client_config)
        client.initiate()
        (hello,) = client.frames_to_send()
        (failed,) = failures(server.receive_frame(hello))
        self.assertEqual(failed.alert, Alert.internal_error)
        self.assertIn("OSError: entropy source unavailable", failed.detail)
        self.assertTrue(server.closed)
        self.assertEqual(server.receive_frame(hello), [])
