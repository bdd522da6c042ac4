"""Every refusal path: which side refuses, with which alert, and what the other side sees.

Most tests put a man in the middle (``rewrite``/``tamper``) between two honest machines, or
feed one machine a hand-made frame in a chosen state. Each asserts the exact alert.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.trial import unittest

from tests.vectors import fixtures
from tests.vectors.harness import (
    Pair,
    connect,
    handshake_frame,
    handshake_type,
    make_configs,
    parse_handshake_frame,
    rewrite,
)
from tlsotp.alerts import Alert
from tlsotp.handshake import (
    AlertReceived,
    ApplicationData,
    ClientConfig,
    ClientConnection,
    ClientState,
    ConnectionFailed,
    Event,
    HandshakeComplete,
    ServerConfig,
    ServerConnection,
    ServerState,
    Suite,
    suite_named,
)
from tlsotp.handshake.certificates import encode_chain
from tlsotp.handshake.frames import ContentType, encode_frame
from tlsotp.handshake.key_exchange import encode_key_share, wrap_secret
from tlsotp.handshake.keyschedule import derive_handshake_secrets, finished_mac
from tlsotp.handshake.limits import MAX_FRAME, MAX_PLAINTEXT
from tlsotp.handshake.messages import (
    Certificate,
    CertificateVerify,
    ClientHello,
    Finished,
    HandshakeType,
    KeyShare,
    KeyTransport,
    ServerHello,
    encode_handshake,
)
from tlsotp.handshake.signatures import CLIENT_CONTEXT, SignatureScheme, sign, signed_content
from tlsotp.handshake.suites import Group, HashAlgorithm
from tlsotp.pki.builders import issue_certificate
from tlsotp.pki.roles import Role
from tlsotp.pki.verify import PeerVerifier

S384 = suite_named("TLSOTP_ECDHE_X25519_ECDSA_WITH_AES_256_GCM_SHA384")
CHACHA = suite_named("TLSOTP_ECDHE_X25519_ECDSA_WITH_CHACHA20_POLY1305_SHA256")
AES128 = suite_named("TLSOTP_ECDHE_X25519_ECDSA_WITH_AES_128_GCM_SHA256")
P256 = suite_named("TLSOTP_ECDHE_P256_ECDSA_WITH_AES_128_GCM_SHA256")
P384 = suite_named("TLSOTP_ECDHE_P384_ECDSA_WITH_AES_256_GCM_SHA384")
X25519_PSS = suite_named("TLSOTP_ECDHE_X25519_RSA_PSS_WITH_AES_256_GCM_SHA384")
RSA_T = suite_named("TLSOTP_RSA_OAEP_WITH_AES_256_GCM_SHA384")


def flip(data: bytes, index: int = -1) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 0x01
    return bytes(changed)


class AlertTestCase(unittest.SynchronousTestCase):
    def assertFailed(self, events: list[Event], alert: Alert, detail: str | None = None) -> ConnectionFailed:
        self.assertEqual(len(events), 1, events)
        event = events[0]
        assert isinstance(event, ConnectionFailed), events
        self.assertEqual(event.alert, alert, event.detail)
        if detail is not None:
            self.assertIn(detail, event.detail)
        return event

    def assertBothSides(self, pair: Pair, refuser: str, alert: Alert) -> ConnectionFailed:
        """One side refused with ``alert`` and the other received exactly that alert."""
        refusing, other = (pair.server_events, pair.client_events) if refuser == "server" else (pair.client_events, pair.server_events)
        failed = [e for e in refusing if isinstance(e, ConnectionFailed)]
        self.assertEqual(len(failed), 1, refusing)
        self.assertEqual(failed[0].alert, alert, failed[0].detail)
        self.assertEqual([e for e in other if not isinstance(e, HandshakeComplete)], [AlertReceived(alert)])
        self.assertTrue(pair.client.closed and pair.server.closed)
        self.assertEqual(pair.client.state, ClientState.FAILED)
        self.assertEqual(pair.server.state, ServerState.FAILED)
        return failed[0]


class Capture:
    """One deterministic handshake's frames, and machines advanced to any point of it."""

    def __init__(self, suite: Suite, server_key: str = "ec-p256") -> None:
        self.suite, self.server_key = suite, server_key
        pair = connect(*self.configs())
        pair.client.send_application_data(b"request")
        pair.server.send_application_data(b"answer")
        pair.pump()
        self.c2s = [f for d, f in pair.wire if d == "c2s"]
        self.s2c = [f for d, f in pair.wire if d == "s2c"]

    def configs(self) -> tuple[ClientConfig, ServerConfig]:
        return make_configs(self.suite, server_key=self.server_key)

    def server_after(self, n_client_frames: int) -> ServerConnection:
        server = ServerConnection(self.configs()[1])
        for frame in self.c2s[:n_client_frames]:
            assert not any(isinstance(e, ConnectionFailed) for e in server.receive_frame(frame))
        server.frames_to_send()
        return server

    def client_after(self, n_server_frames: int, *, initiate: bool = True) -> ClientConnection:
        client = ClientConnection(self.configs()[0])
        if initiate:
            client.initiate()
        for frame in self.s2c[:n_server_frames]:
            assert not any(isinstance(e, ConnectionFailed) for e in client.receive_frame(frame))
        client.frames_to_send()
        return client

    def frame_of_type(self, msg_type: HandshakeType) -> bytes:
        return next(f for f in self.c2s + self.s2c if handshake_type(f) is msg_type)


_ECDHE = Capture(S384)
_RSA = Capture(RSA_T, server_key="rsa-2048")
_ANY_MESSAGE = {t: (_RSA if t is HandshakeType.key_transport else _ECDHE).frame_of_type(t) for t in HandshakeType}


class OutOfOrderTests(AlertTestCase):
    def check(self, make: Callable[[], ClientConnection | ServerConnection], expected: HandshakeType | None, label: str) -> None:
        for msg_type, frame in _ANY_MESSAGE.items():
            if msg_type is expected:
                continue
            machine = make()
            self.assertFailed(machine.receive_frame(frame), Alert.unexpected_message)
            self.assertTrue(machine.closed, label)
            sent = machine.frames_to_send()
            self.assertEqual(len(sent), 1)
            self.assertEqual(sent[0][0], ContentType.alert)
        # Application data is never acceptable before the peer's Finished.
        if expected is not None:
            machine = make()
            self.assertFailed(machine.receive_frame(bytes([ContentType.application_data]) + bytes(40)), Alert.unexpected_message)

    def test_server_refuses_every_unexpected_message_in_every_state(self) -> None:
        expected = [HandshakeType.client_hello, HandshakeType.certificate, HandshakeType.certificate_verify, HandshakeType.finished, None]
        for n, msg_type in enumerate(expected):
            self.check(lambda: _ECDHE.server_after(n), msg_type, f"server after {n} client frames")

    def test_server_waiting_for_key_transport_refuses_everything_else(self) -> None:
        self.assertEqual(_RSA.server_after(1).state, ServerState.WAIT_KEY_TRANSPORT)
        self.check(lambda: _RSA.server_after(1), HandshakeType.key_transport, "RSA server after ClientHello")

    def test_client_refuses_every_unexpected_message_in_every_state(self) -> None:
        self.check(lambda: _ECDHE.client_after(0, initiate=False), None, "client before initiate")
        expected = [HandshakeType.server_hello, HandshakeType.certificate, HandshakeType.certificate_verify, HandshakeType.finished, None]
        for n, msg_type in enumerate(expected):
            self.check(lambda: _ECDHE.client_after(n), msg_type, f"client after {n} server frames")

    def test_key_transport_in_an_ecdhe_handshake(self) -> None:
        server = _ECDHE.server_after(1)
        self.assertFailed(server.receive_frame(_ANY_MESSAGE[HandshakeType.key_transport]), Alert.unexpected_message)

    def test_reordered_application_data_is_refused(self) -> None:
        # The server's first record arrives before its Finished.
        client = _ECDHE.client_after(3)
        self.assertFailed(client.receive_frame(_ECDHE.s2c[4]), Alert.unexpected_message)
        # The client's request arrives before its Finished.
        server = _ECDHE.server_after(3)
        self.assertFailed(server.receive_frame(_ECDHE.c2s[4]), Alert.unexpected_message)


class DecodeTests(AlertTestCase):
    def receivers(self) -> list[tuple[bytes, Callable[[], ClientConnection | ServerConnection]]]:
        """Every captured handshake frame with a maker of the machine that expects it next."""
        out: list[tuple[bytes, Callable[[], ClientConnection | ServerConnection]]] = []
        for n in range(4):
            out.append((_ECDHE.c2s[n], lambda n=n: _ECDHE.server_after(n)))  # type: ignore[misc]
            out.append((_ECDHE.s2c[n], lambda n=n: _ECDHE.client_after(n)))  # type: ignore[misc]
        out.append((_RSA.c2s[1], lambda: _RSA.server_after(1)))
        return out

    def test_truncated_and_extended_frames_are_decode_errors(self) -> None:
        for frame, make in self.receivers():
            self.assertFailed(make().receive_frame(frame[:-1]), Alert.decode_error, None)
            self.assertFailed(make().receive_frame(frame + b"\x00"), Alert.decode_error, None)
            self.assertFailed(make().receive_frame(frame[:3]), Alert.decode_error, None)
            # Trailing bytes inside a body whose header length is consistent.
            body = frame[5:] + b"\x00"
            consistent = bytes([ContentType.handshake, frame[1]]) + len(body).to_bytes(3, "big") + body
            self.assertFailed(make().receive_frame(consistent), Alert.decode_error)

    def test_every_prefix_of_a_client_hello_is_a_decode_error(self) -> None:
        hello = _ECDHE.c2s[0]
        for cut in range(len(hello)):
            server = ServerConnection(_ECDHE.configs()[1])
            self.assertFailed(server.receive_frame(hello[:cut]), Alert.decode_error)

    def test_bounds_on_lists(self) -> None:
        hello = parse_handshake_frame(_ECDHE.c2s[0])
        assert isinstance(hello, ClientHello)
        too_many = dataclasses.replace(hello, suites=tuple(range(1, 66)))
        self.assertFailed(ServerConnection(_ECDHE.configs()[1]).receive_frame(handshake_frame(too_many)), Alert.decode_error)
        cert = parse_handshake_frame(_ECDHE.s2c[1])
        assert isinstance(cert, Certificate)
        long_chain = Certificate(cert.chain * 5)
        self.assertFailed(_ECDHE.client_after(1).receive_frame(handshake_frame(long_chain)), Alert.decode_error, "longer than 4")

    def test_frame_level_garbage(self) -> None:
        server = lambda: ServerConnection(_ECDHE.configs()[1])  # noqa: E731
        self.assertFailed(server().receive_frame(b""), Alert.decode_error)
        self.assertFailed(server().receive_frame(b"\x63hello"), Alert.unexpected_message, "content type 99")
        self.assertFailed(server().receive_frame(b"\x16\x63\x00\x00\x00"), Alert.unexpected_message, "handshake message type 99")
        self.assertFailed(server().receive_frame(b"\x15\xff"), Alert.decode_error, "unknown alert code")
        self.assertFailed(server().receive_frame(b"\x15\x28\x00"), Alert.decode_error)
        self.assertFailed(server().receive_frame(bytes([22]) + bytes(MAX_FRAME)), Alert.record_overflow)

    def test_finished_of_the_wrong_length(self) -> None:
        client = _ECDHE.client_after(3)
        self.assertFailed(client.receive_frame(handshake_frame(Finished(bytes(32)))), Alert.decode_error, "wrong length")


class NegotiationTests(AlertTestCase):
    def test_no_common_suite_because_of_the_certificate_key(self) -> None:
        # The client only offers ECDSA suites; the server's certificate is RSA.
        pair = connect(*make_configs((S384, P256), server_key="rsa-2048", server_suites=(X25519_PSS, S384)))
        failed = self.assertBothSides(pair, "server", Alert.insufficient_security)
        self.assertEqual(failed.detail, "no cipher suite in common")

    def test_no_common_suite_in_the_lists(self) -> None:
        pair = connect(*make_configs((S384,), server_suites=(P256, CHACHA)))
        self.assertBothSides(pair, "server", Alert.insufficient_security)

    def test_no_common_version(self) -> None:
        tamper = rewrite("c2s", ClientHello, lambda m: dataclasses.replace(m, versions=(2, 3)))
        pair = connect(*make_configs(S384), tamper=tamper)
        self.assertBothSides(pair, "server", Alert.protocol_version)

    def test_server_picking_an_unoffered_version(self) -> None:
        pair = connect(*make_configs(S384), tamper=rewrite("s2c", ServerHello, lambda m: dataclasses.replace(m, version=2)))
        self.assertBothSides(pair, "client", Alert.illegal_parameter)

    def test_server_picking_an_unoffered_suite(self) -> None:
        pair = connect(*make_configs(S384), tamper=rewrite("s2c", ServerHello, lambda m: dataclasses.replace(m, suite=P256.code)))
        failed = self.assertBothSides(pair, "client", Alert.illegal_parameter)
        self.assertIn("did not offer", failed.detail)

    def test_key_share_in_an_rsa_server_hello(self) -> None:
        tamper = rewrite("s2c", ServerHello, lambda m: dataclasses.replace(m, key_share=b"\x01" * 32))
        pair = connect(*make_configs(RSA_T, server_key="rsa-2048"), tamper=tamper)
        self.assertBothSides(pair, "client", Alert.illegal_parameter)

    def test_duplicate_suites_and_key_shares(self) -> None:
        def twice_suite(m: ClientHello) -> ClientHello:
            return dataclasses.replace(m, suites=m.suites + m.suites[:1])

        def twice_share(m: ClientHello) -> ClientHello:
            return dataclasses.replace(m, key_shares=m.key_shares + m.key_shares[:1])

        for change in (twice_suite, twice_share):
            pair = connect(*make_configs((S384, P256)), tamper=rewrite("c2s", ClientHello, change))
            self.assertBothSides(pair, "server", Alert.illegal_parameter)

    def test_key_share_for_a_group_no_offered_suite_uses(self) -> None:
        extra = KeyShare(Group.P384, b"\x04" + bytes(96))
        tamper = rewrite("c2s", ClientHello, lambda m: dataclasses.replace(m, key_shares=m.key_shares + (extra,)))
        pair = connect(*make_configs(S384), tamper=tamper)
        self.assertBothSides(pair, "server", Alert.illegal_parameter)

    def test_missing_key_share_for_the_chosen_group(self) -> None:
        pair = connect(*make_configs(S384), tamper=rewrite("c2s", ClientHello, lambda m: dataclasses.replace(m, key_shares=())))
        failed = self.assertBothSides(pair, "server", Alert.illegal_parameter)
        self.assertIn("no X25519 key share", failed.detail)

    def test_unknown_suites_and_groups_are_ignored(self) -> None:
        def add_unknowns(m: ClientHello) -> ClientHello:
            return dataclasses.replace(m, suites=(0xFEFE,) + m.suites, key_shares=(KeyShare(0x0999, b"x"),) + m.key_shares)

        # Both sides see different ClientHellos, so the handshake must still fail -- but only at
        # the signature, proving the server accepted and skipped the unknown entries.
        pair = connect(*make_configs(S384), tamper=rewrite("c2s", ClientHello, add_unknowns))
        self.assertEqual(pair.server.suite, S384)
        self.assertBothSides(pair, "client", Alert.decrypt_error)


class DowngradeAndTamperTests(AlertTestCase):
    def test_stripping_the_strongest_suite_is_detected(self) -> None:
        def strip(m: ClientHello) -> ClientHello:
            return dataclasses.replace(
                m, suites=m.suites[1:], key_shares=tuple(s for s in m.key_shares if s.group != Group.X25519)
            )

        pair = connect(*make_configs((S384, P256)), tamper=rewrite("c2s", ClientHello, strip))
        self.assertEqual(pair.server.suite, P256)  # the server was fooled into the weaker suite...
        failed = self.assertBothSides(pair, "client", Alert.decrypt_error)  # ...the client was not
        self.assertEqual(failed.detail, "server CertificateVerify signature does not verify")

    def test_reordering_the_offered_suites_is_detected(self) -> None:
        tamper = rewrite("c2s", ClientHello, lambda m: dataclasses.replace(m, suites=m.suites[::-1]))
        pair = connect(*make_configs((S384, CHACHA), server_suites=(S384, CHACHA)), tamper=tamper)
        self.assertBothSides(pair, "client", Alert.decrypt_error)

    def test_rewriting_the_chosen_suite_is_detected(self) -> None:
        tamper = rewrite("s2c", ServerHello, lambda m: dataclasses.replace(m, suite=AES128.code))
        pair = connect(*make_configs((CHACHA, AES128)), tamper=tamper)
        self.assertEqual(pair.client.suite, AES128)
        self.assertBothSides(pair, "client", Alert.decrypt_error)

    def test_rewriting_the_chosen_suite_across_hashes_is_detected(self) -> None:
        tamper = rewrite("s2c", ServerHello, lambda m: dataclasses.replace(m, suite=CHACHA.code))
        pair = connect(*make_configs((S384, CHACHA)), tamper=tamper)
        # The server signed with SHA-384; the client now expects the SHA-256 scheme.
        self.assertBothSides(pair, "client", Alert.illegal_parameter)

    def test_rewriting_a_random_is_detected(self) -> None:
        for direction, kind in (("c2s", ClientHello), ("s2c", ServerHello)):
            tamper = rewrite(direction, kind, lambda m: dataclasses.replace(m, random=flip(m.random)))
            pair = connect(*make_configs(S384), tamper=tamper)
            self.assertBothSides(pair, "client", Alert.decrypt_error)

    def test_substituting_the_clients_key_share_is_detected(self) -> None:
        attacker_share = encode_key_share(fixtures.ephemeral_key("server", Group.X25519))
        tamper = rewrite("c2s", ClientHello, lambda m: dataclasses.replace(m, key_shares=(KeyShare(Group.X25519, attacker_share),)))
        pair = connect(*make_configs(S384), tamper=tamper)
        self.assertBothSides(pair, "client", Alert.decrypt_error)

    def test_certificate_key_that_cannot_authenticate_the_suite(self) -> None:
        # The server (RSA certificate) chose the RSA-PSS suite; the MITM claims ECDSA.
        tamper = rewrite("s2c", ServerHello, lambda m: dataclasses.replace(m, suite=S384.code))
        pair = connect(*make_configs((X25519_PSS, S384), server_key="rsa-2048", server_suites=(X25519_PSS, S384)), tamper=tamper)
        failed = self.assertBothSides(pair, "client", Alert.unsupported_certificate)
        self.assertIn("cannot authenticate", failed.detail)

    def test_tampered_server_signature(self) -> None:
        for suite, key in ((S384, "ec-p256"), (X25519_PSS, "rsa-2048")):
            tamper = rewrite("s2c", CertificateVerify, lambda m: dataclasses.replace(m, signature=flip(m.signature, 10)))
            pair = connect(*make_configs(suite, server_key=key), tamper=tamper)
            self.assertBothSides(pair, "client", Alert.decrypt_error)

    def test_tampered_client_signature(self) -> None:
        for client_key in ("ec-p256", "rsa-2048"):
            tamper = rewrite("c2s", CertificateVerify, lambda m: dataclasses.replace(m, signature=flip(m.signature, 10)))
            pair = connect(*make_configs(S384, client_key=client_key), tamper=tamper)
            failed = self.assertBothSides(pair, "server", Alert.decrypt_error)
            self.assertEqual(failed.detail, "client CertificateVerify signature does not verify")

    def test_signature_scheme_must_match_the_key_and_suite(self) -> None:
        tamper = rewrite("s2c", CertificateVerify, lambda m: dataclasses.replace(m, scheme=0x0804))
        self.assertBothSides(connect(*make_configs(S384), tamper=tamper), "client", Alert.illegal_parameter)
        tamper = rewrite("c2s", CertificateVerify, lambda m: dataclasses.replace(m, scheme=0x0403))
        self.assertBothSides(connect(*make_configs(S384), tamper=tamper), "server", Alert.illegal_parameter)

    def test_server_signature_replayed_as_client_signature(self) -> None:
        """Different context strings: a CertificateVerify cannot change roles."""
        pair = connect(*make_configs(S384))
        server_cv = parse_handshake_frame(
            next(f for d, f in pair.wire if d == "s2c" and handshake_type(f) is HandshakeType.certificate_verify)
        )
        tamper = rewrite("c2s", CertificateVerify, lambda m: server_cv)
        self.assertBothSides(connect(*make_configs(S384), tamper=tamper), "server", Alert.decrypt_error)

    def test_tampered_client_finished(self) -> None:
        tamper = rewrite("c2s", Finished, lambda m: Finished(flip(m.verify_data)))
        failed = self.assertBothSides(connect(*make_configs(S384), tamper=tamper), "server", Alert.decrypt_error)
        self.assertEqual(failed.detail, "client Finished does not verify")

    def test_tampered_server_finished(self) -> None:
        tamper = rewrite("s2c", Finished, lambda m: Finished(flip(m.verify_data)))
        pair = connect(*make_configs(S384), tamper=tamper)
        failed = self.assertBothSides(pair, "client", Alert.decrypt_error)
        self.assertEqual(failed.detail, "server Finished does not verify")


class CertificateTests(AlertTestCase):
    def test_revoked_client_certificate(self) -> None:
        client_config, server_config = make_configs(S384)
        crl = fixtures.crl_revoking(fixtures.identity("client", "ec-p256").certificate)
        server_config = dataclasses.replace(server_config, validate_peer=fixtures.client_verifier(crl))
        failed = self.assertBothSides(connect(client_config, server_config), "server", Alert.certificate_revoked)
        self.assertIn("revoked", failed.detail)

    def test_server_from_an_unknown_root(self) -> None:
        client_config, server_config = make_configs(S384)
        impostor = fixtures.other_root_identity()
        server_config = dataclasses.replace(server_config, certificate_chain=impostor.chain, private_key=impostor.key)
        self.assertBothSides(connect(client_config, server_config), "client", Alert.unknown_ca)

    def test_server_certificate_for_another_name(self) -> None:
        client_config, server_config = make_configs(S384)
        client_config = dataclasses.replace(
            client_config,
            validate_peer=PeerVerifier(fixtures.root(), Role.SERVER, expected_names=["other.test"], clock=lambda: fixtures.VECTOR_TIME),
        )
        self.assertBothSides(connect(client_config, server_config), "client", Alert.bad_certificate)

    def test_client_certificate_presented_by_the_server(self) -> None:
        """The EKU check in the validator: a client certificate cannot act as a server."""
        client_config, server_config = make_configs(S384)
        key = fixtures.certificate_key("server", "ec-p256")
        wrong = issue_certificate(
            fixtures.root_key(), fixtures.root(), key.public_key(),
            name=fixtures.SERVER_NAME, role=Role.CLIENT, days=30, now=fixtures.VECTOR_TIME,
        )
        server_config = dataclasses.replace(server_config, certificate_chain=(wrong,))
        self.assertBothSides(connect(client_config, server_config), "client", Alert.unsupported_certificate)

    def test_empty_client_chain_is_certificate_required(self) -> None:
        client_config, server_config = make_configs(S384)
        client_config = dataclasses.replace(client_config, certificate_chain=())
        pair = connect(client_config, server_config)
        failed = self.assertBothSides(pair, "server", Alert.certificate_required)
        self.assertEqual(failed.detail, "client sent no certificate")
        sent = [handshake_type(f) for d, f in pair.wire if d == "c2s"]
        self.assertEqual(sent, [HandshakeType.client_hello, HandshakeType.certificate, HandshakeType.finished])

    def test_empty_server_chain_is_decode_error(self) -> None:
        pair = connect(*make_configs(S384), tamper=rewrite("s2c", Certificate, lambda m: Certificate(())))
        self.assertBothSides(pair, "client", Alert.decode_error)

    def test_unparseable_certificate_is_bad_certificate(self) -> None:
        pair = connect(*make_configs(S384), tamper=rewrite("c2s", Certificate, lambda m: Certificate((b"\x30\x03\x02\x01\x01",))))
        self.assertBothSides(pair, "server", Alert.bad_certificate)


class KeyShareTests(AlertTestCase):
    def replace_share(self, group: Group, data: bytes) -> Callable[[ClientHello], ClientHello]:
        return lambda m: dataclasses.replace(
            m, key_shares=tuple(KeyShare(s.group, data) if s.group == group else s for s in m.key_shares)
        )

    def test_bad_client_points(self) -> None:
        honest = parse_handshake_frame(connect(*make_configs(P256)).wire[0][1])
        assert isinstance(honest, ClientHello)
        point = honest.key_shares[0].key_exchange
        off_curve = point[:-1] + bytes([point[-1] ^ 1])
        compressed = b"\x02" + point[1:33]
        cases = [
            (P256, Group.P256, off_curve, "invalid P256"),
            (P256, Group.P256, b"\x05" + point[1:], "invalid P256"),
            (P256, Group.P256, compressed, "must be 65 bytes"),
            (S384, Group.X25519, bytes(32), "key exchange failed"),  # small-order point
            (S384, Group.X25519, bytes(31), "must be 32 bytes"),
        ]
        for suite, group, data, detail in cases:
            pair = connect(*make_configs(suite), tamper=rewrite("c2s", ClientHello, self.replace_share(group, data)))
            failed = self.assertBothSides(pair, "server", Alert.illegal_parameter)
            self.assertIn(detail, failed.detail)

    def test_bad_server_point(self) -> None:
        tamper = rewrite("s2c", ServerHello, lambda m: dataclasses.replace(m, key_share=flip(m.key_share)))
        pair = connect(*make_configs(P384), tamper=tamper)
        self.assertBothSides(pair, "client", Alert.illegal_parameter)


class RsaTransportTests(AlertTestCase):
    """A bad KeyTransport must look exactly like a bad Finished: no padding oracle.

    The attacker here is a client with a valid certificate (anyone the TTP enrolled) that
    submits chosen ciphertexts and signs its transcript honestly, so that the server's only
    reaction is to the decryption. It is built by hand from the library's pieces.
    """

    def attack(self, ciphertext: bytes | None, secret: bytes, *, break_finished: bool = False) -> tuple[HandshakeType, list[Event], bytes]:
        client_config, server_config = make_configs(RSA_T, server_key="rsa-2048")
        client, server = ClientConnection(client_config), ServerConnection(server_config)
        client.initiate()
        (hello,) = client.frames_to_send()
        server.receive_frame(hello)
        transcript = [hello[1:]] + [f[1:] for f in server.frames_to_send()]
        h = RSA_T.hash
        server_public = fixtures.identity("server", "rsa-2048").key.public_key()
        assert isinstance(server_public, rsa.RSAPublicKey)
        if ciphertext is None:
            ciphertext = wrap_secret(server_public, secret)
        hello_hash = digest(h, transcript[:2])
        secrets = derive_handshake_secrets(h, secret, hello_hash)
        me = fixtures.identity("client", "ec-p256")
        flight = [encode_handshake(KeyTransport(ciphertext)), encode_handshake(Certificate(encode_chain(me.chain)))]
        signature = sign(me.key, h, signed_content(CLIENT_CONTEXT, digest(h, transcript + flight)))
        flight.append(encode_handshake(CertificateVerify(SignatureScheme.ecdsa_sha384, signature)))
        verify_data = finished_mac(h, secrets.client_finished_key, digest(h, transcript + flight))
        flight.append(encode_handshake(Finished(flip(verify_data) if break_finished else verify_data)))
        for message in flight:
            events = server.receive_frame(bytes([ContentType.handshake]) + message)
            if events:
                return HandshakeType(message[0]), events, b"".join(server.frames_to_send())
        self.fail("server accepted the flight without answering")

    def test_honest_hand_built_client_is_accepted(self) -> None:
        """The attack harness itself is sound: with a good ciphertext the server completes."""
        msg_type, events, _ = self.attack(None, bytes(range(32)))
        self.assertEqual(msg_type, HandshakeType.finished)
        self.assertIsInstance(events[0], HandshakeComplete)

    def test_bad_ciphertexts_and_a_bad_finished_are_indistinguishable(self) -> None:
        server_public = fixtures.identity("server", "rsa-2048").key.public_key()
        assert isinstance(server_public, rsa.RSAPublicKey)
        secret = bytes(range(32))
        good = wrap_secret(server_public, secret)
        outcomes = {
            "flipped ciphertext": self.attack(flip(good, 20), secret),
            "31-byte secret": self.attack(wrap_secret(server_public, secret[:31]), secret[:31]),
            "48-byte secret": self.attack(wrap_secret(server_public, secret + secret[:16]), secret),
            "ciphertext too short": self.attack(bytes(255), secret),
            "ciphertext of zeros": self.attack(bytes(256), secret),
            "bad Finished": self.attack(good, secret, break_finished=True),
        }
        reference = outcomes["bad Finished"]
        self.assertEqual(reference[0], HandshakeType.finished)
        self.assertEqual(reference[1], [ConnectionFailed(Alert.decrypt_error, "client Finished does not verify")])
        self.assertEqual(reference[2], bytes([ContentType.alert, Alert.decrypt_error]))
        for name, outcome in outcomes.items():
            self.assertEqual(outcome, reference, name)

    def test_a_man_in_the_middle_cannot_swap_the_ciphertext(self) -> None:
        """Without the client's key, an edited KeyTransport breaks the client's signature first."""
        tamper = rewrite("c2s", KeyTransport, lambda m: KeyTransport(flip(m.encrypted_secret)))
        pair = connect(*make_configs(RSA_T, server_key="rsa-2048"), tamper=tamper)
        failed = self.assertBothSides(pair, "server", Alert.decrypt_error)
        self.assertEqual(failed.detail, "client CertificateVerify signature does not verify")


def digest(h: HashAlgorithm, messages: list[bytes]) -> bytes:
    hasher = hashes.Hash(h.new())
    for message in messages:
        hasher.update(message)
    return hasher.finalize()


class RecordTests(AlertTestCase):
    def connected(self, deterministic: bool = True) -> Pair:
        pair = connect(*make_configs(S384, deterministic=deterministic))
        self.assertTrue(pair.server.handshake_complete and pair.client.state is ClientState.CONNECTED)
        return pair

    def test_tampered_record(self) -> None:
        pair = self.connected()
        pair.client.send_application_data(b"OTP please")
        (record,) = pair.client.frames_to_send()
        self.assertFailed(pair.server.receive_frame(flip(record)), Alert.bad_record_mac)
        # The refusal after the handshake is itself protected.
        (alert,) = pair.server.frames_to_send()
        self.assertEqual((alert[0], len(alert)), (ContentType.alert, 18))
        self.assertEqual(pair.client.receive_frame(alert), [AlertReceived(Alert.bad_record_mac)])

    def test_replay_within_a_connection(self) -> None:
        pair = self.connected()
        pair.client.send_application_data(b"pay 100")
        (record,) = pair.client.frames_to_send()
        self.assertEqual(pair.server.receive_frame(record), [ApplicationData(b"pay 100")])
        self.assertFailed(pair.server.receive_frame(record), Alert.bad_record_mac)

    def test_replay_into_another_connection(self) -> None:
        first, second = self.connected(deterministic=False), self.connected(deterministic=False)
        first.client.send_application_data(b"pay 100")
        (record,) = first.client.frames_to_send()
        self.assertFailed(second.server.receive_frame(record), Alert.bad_record_mac)

    def test_replayed_client_flight_into_another_handshake(self) -> None:
        recorded = self.connected(deterministic=False)
        client_frames = [f for d, f in recorded.wire if d == "c2s"]
        _, server_config = make_configs(S384, deterministic=False)
        server = ServerConnection(server_config)
        events: list[Event] = []
        for frame in client_frames:
            events += server.receive_frame(frame)
        self.assertFailed(events, Alert.decrypt_error, "client CertificateVerify")

    def test_reordered_or_dropped_records(self) -> None:
        pair = self.connected()
        pair.server.send_application_data(b"one")
        pair.server.send_application_data(b"two")
        one, two = pair.server.frames_to_send()
        self.assertFailed(pair.client.receive_frame(two), Alert.bad_record_mac)  # "one" late or lost
        self.assertEqual(pair.client.receive_frame(one), [])  # and the connection stays dead

    def test_oversize_record(self) -> None:
        pair = self.connected()
        frame = encode_frame(ContentType.application_data, bytes(MAX_PLAINTEXT + 17))
        self.assertFailed(pair.server.receive_frame(frame), Alert.record_overflow)

    def test_forged_plaintext_close_notify_cannot_truncate(self) -> None:
        pair = self.connected()
        forged = bytes([ContentType.alert, Alert.close_notify])
        self.assertFailed(pair.client.receive_frame(forged), Alert.bad_record_mac)

    def test_plaintext_handshake_message_after_finished(self) -> None:
        pair = self.connected()
        self.assertFailed(pair.client.receive_frame(_ANY_MESSAGE[HandshakeType.finished]), Alert.unexpected_message)


class TerminalTests(AlertTestCase):
    def test_frames_after_a_failure_are_ignored(self) -> None:
        server = ServerConnection(_ECDHE.configs()[1])
        self.assertFailed(server.receive_frame(b"\x99"), Alert.unexpected_message)
        self.assertEqual(len(server.frames_to_send()), 1)
        for frame in [_ECDHE.c2s[0], b"", b"\x15\x00", bytes([23]) + bytes(40)]:
            self.assertEqual(server.receive_frame(frame), [])
        self.assertEqual(server.frames_to_send(), [])
        self.assertEqual(server.state, ServerState.FAILED)

    def test_alert_received_mid_handshake_ends_without_reply(self) -> None:
        client = _ECDHE.client_after(1)
        self.assertEqual(
            client.receive_frame(bytes([ContentType.alert, Alert.handshake_failure])), [AlertReceived(Alert.handshake_failure)]
        )
        self.assertEqual(client.frames_to_send(), [])
        self.assertEqual(client.receive_frame(_ECDHE.s2c[1]), [])
        self.assertEqual(client.state, ClientState.FAILED)

    def test_abort_is_a_local_failure(self) -> None:
        client = _ECDHE.client_after(0)
        self.assertEqual(client.abort(Alert.handshake_failure, "timed out"), [ConnectionFailed(Alert.handshake_failure, "timed out")])
        self.assertEqual(client.frames_to_send(), [bytes([ContentType.alert, Alert.handshake_failure])])
        self.assertEqual(client.receive_frame(_ECDHE.s2c[0]), [])

