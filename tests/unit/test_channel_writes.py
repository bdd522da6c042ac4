"""What the Twisted shell puts on the wire: one write per flight, TCP_NODELAY, and the alert
for a netstring the shell cannot accept (record_overflow for a frame over MAX_FRAME,
decode_error for malformed framing)."""

from __future__ import annotations

import re
import socket
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Factory
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from tests.vectors.harness import make_configs
from tlsotp.alerts import Alert, AlertError
from tlsotp.handshake import MAX_FRAME, ClientConnection, HandshakeComplete, ServerConnection, suite_named
from tlsotp.services.channel import SansIOConnection, SecureChannelProtocol, refusal_for_bad_netstring

SUITE = suite_named("TLSOTP_ECDHE_X25519_ECDSA_WITH_AES_128_GCM_SHA256")
CLIENT_CONFIG, SERVER_CONFIG = make_configs(SUITE)


class RecordingTransport(StringTransport):
    """A StringTransport that keeps each ``write`` separately."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


def netstrings(data: bytes) -> list[bytes]:
    frames, pos = [], 0
    while pos < len(data):
        match = re.compile(rb"(\d+):").match(data, pos)
        assert match is not None, data[pos:]
        start = match.end()
        end = start + int(match.group(1))
        assert data[end : end + 1] == b","
        frames.append(data[start:end])
        pos = end + 1
    return frames


class Client(SecureChannelProtocol):
    peer_role = "server"

    def __init__(self) -> None:
        self.answers: list[bytes] = []
        self.clean = False
        self.errors: list[AlertError] = []
        super().__init__()

    def make_connection(self) -> SansIOConnection:
        return ClientConnection(CLIENT_CONFIG)

    def start(self) -> None:
        assert isinstance(self.connection, ClientConnection)
        self.connection.initiate()

    def handshake_complete(self, event: HandshakeComplete) -> None:
        self.connection.send_application_data(b"request")

    def application_data(self, data: bytes) -> None:
        self.answers.append(data)

    def closed_cleanly(self) -> None:
        self.clean = True

    def failed(self, error: AlertError, *, sent: bool) -> None:
        self.errors.append(error)


class Server(SecureChannelProtocol):
    peer_role = "client"

    def __init__(self) -> None:
        self.nodelay: Deferred[int] = Deferred()
        super().__init__()

    def make_connection(self) -> SansIOConnection:
        return ServerConnection(SERVER_CONFIG)

    def connectionMade(self) -> None:
        super().connectionMade()
        if ITCPTransport.providedBy(self.transport):
            handle = self.transport.getHandle()  # type: ignore[union-attr,attr-defined]
            self.nodelay.callback(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    def application_data(self, data: bytes) -> None:
        self.connection.send_application_data(b"answer to " + data)
        self.close()


def offline(protocol: SecureChannelProtocol) -> SecureChannelProtocol:
    """Timeouts on a private clock, so that nothing is left on the global reactor."""
    protocol.callLater = task.Clock().callLater  # type: ignore[assignment, method-assign]
    return protocol


class OneWritePerFlightTests(unittest.SynchronousTestCase):
    def test_each_flight_is_one_write(self) -> None:
        client, server = offline(Client()), offline(Server())
        c_transport, s_transport = RecordingTransport(), RecordingTransport()
        client.makeConnection(c_transport)
        server.makeConnection(s_transport)
        delivered = {"c": 0, "s": 0}
        for _ in range(10):  # shuttle each write as one chunk, as TCP would deliver it
            for writes, receiver, key in ((c_transport.writes, server, "c"), (s_transport.writes, client, "s")):
                for data in writes[delivered[key] :]:
                    receiver.dataReceived(data)
                delivered[key] = len(writes)
        client.connectionLost()
        self.assertEqual(client.answers, [b"answer to request"])  # type: ignore[attr-defined]
        self.assertTrue(client.clean)  # type: ignore[attr-defined]
        kinds = lambda writes: [[frame[0] for frame in netstrings(w)] for w in writes]  # noqa: E731
        # client: ClientHello | Certificate, CertificateVerify, Finished, request | close_notify
        self.assertEqual(kinds(c_transport.writes), [[22], [22, 22, 22, 23], [21]])
        # server: ServerHello, Certificate, CertificateVerify | Finished, answer, close_notify
        self.assertEqual(kinds(s_transport.writes), [[22, 22, 22], [22, 23, 21]])


class NoDelayTests(unittest.TestCase):
    async def test_tcp_nodelay_is_set_on_real_connections(self) -> None:
        servers: list[Server] = []

        def build() -> Server:
            servers.append(Server())
            return servers[-1]

        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(build))
        self.addCleanup(port.stopListening)
        client = Client()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client)
        self.assertEqual(await servers[0].nodelay, 1)
        self.assertEqual(client.transport.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)  # type: ignore[union-attr]
        done: Deferred[None] = Deferred()
        lost = client.connectionLost

        def connection_lost(reason: Any = None) -> None:
            lost(reason) if reason is not None else lost()
            done.callback(None)

        client.connectionLost = connection_lost  # type: ignore[method-assign]
        await done
        self.assertEqual(client.answers, [b"answer to request"])
        self.assertTrue(client.clean)


def alert_frame(alert: Alert) -> bytes:
    return b"2:\x15%c," % alert


class BadNetstringTests(unittest.SynchronousTestCase):
    def refusal(self, *chunks: bytes) -> bytes:
        server = offline(Server())
        transport = StringTransport()
        server.makeConnection(transport)
        for chunk in chunks:
            server.dataReceived(chunk)
        self.assertTrue(transport.disconnecting)
        return transport.value()

    def test_a_frame_over_max_frame_is_record_overflow(self) -> None:
        self.assertEqual(self.refusal(b"%d:" % (MAX_FRAME + 1)), alert_frame(Alert.record_overflow))
        self.assertEqual(self.refusal(b"99999999999999999999999999:"), alert_frame(Alert.record_overflow))
        self.assertEqual(self.refusal(*[bytes([b]) for b in b"99999999"]), alert_frame(Alert.record_overflow))

    def test_malformed_netstrings_are_decode_error(self) -> None:
        for data in (b"abc:", b"01:x,", b"3:abcd5:hello,", b"3:abcd99999999:", b":", b"-1:"):
            self.assertEqual(self.refusal(data), alert_frame(Alert.decode_error), data)

    def test_a_frame_of_exactly_max_frame_is_not_refused_by_the_framing(self) -> None:
        self.assertEqual(refusal_for_bad_netstring(b"%d:" % MAX_FRAME, MAX_FRAME)[0], Alert.decode_error)
        server = offline(Server())
        transport = StringTransport()
        server.makeConnection(transport)
        server.dataReceived(b"%d:" % MAX_FRAME + b"\x16" * 100)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_after_good_frames_the_overflow_is_still_recognised(self) -> None:
        client, server = offline(Client()), offline(Server())
        c_transport, s_transport = StringTransport(), StringTransport()
        client.makeConnection(c_transport)
        server.makeConnection(s_transport)
        server.dataReceived(c_transport.value())
        c_transport.clear()
        # The server's whole first flight, then an over-long frame, in one chunk.
        client.dataReceived(s_transport.value() + b"99999:")
        self.assertEqual([e.alert for e in client.errors], [])  # type: ignore[attr-defined]
        self.assertTrue(c_transport.disconnecting)
        client.connectionLost()
        self.assertEqual([e.alert for e in client.errors], [Alert.record_overflow])  # type: ignore[attr-defined]
        # the client's second flight, then its (protected) alert: type 21, 1 byte + 16-byte tag
        last = netstrings(c_transport.value())[-1]
        self.assertEqual((last[0], len(last)), (21, 18))



class BankServerFlightTests(unittest.TestCase):
    """The real bank server, with its real OTP store (answering from a thread, later than the
    handshake): its second flight, Finished + grant + close_notify, is still one write."""

    async def test_finished_waits_for_the_answer_and_leaves_with_it(self) -> None:
        from pathlib import Path

        from twisted.internet.task import deferLater

        from tests.credentials import test_ca
        from tlsotp.handshake import DEFAULT_SUITES, suites_for_key
        from tlsotp.otp import messages
        from tlsotp.pki.roles import Role
        from tlsotp.services.bank_server import OTPServerFactory, ServerIdentity
        from tlsotp.services.otp_authority import OTPAuthority, OTPPolicy
        from tlsotp.services.otp_client import ClientSettings, OTPClientProtocol

        ca = test_ca()
        bank, alice = ca.issue("bank.example", Role.SERVER), ca.issue("alice.example", Role.CLIENT)
        data_dir = Path(self.mktemp())
        data_dir.mkdir()
        authority = OTPAuthority(reactor, data_dir, OTPPolicy())  # type: ignore[arg-type]  # the global reactor provides IReactorFromThreads
        self.addCleanup(authority.close)
        factory = OTPServerFactory(
            ServerIdentity(bank.key, bank.chain, bank.root),
            authority,
            suites=suites_for_key(bank.certificate.public_key(), DEFAULT_SUITES),
        )
        server = factory.buildProtocol(None)
        assert server is not None
        settings = ClientSettings(
            key=alice.key, chain=alice.chain, root=alice.root, server_name="bank.example", crl=ca.crl()
        )
        client = OTPClientProtocol(settings, messages.OTPRequest("Rs 500 to Bob"))
        offline(server)
        offline(client)
        c_transport, s_transport = RecordingTransport(), RecordingTransport()
        server.makeConnection(s_transport)
        client.makeConnection(c_transport)
        delivered = {"c": 0, "s": 0}
        for _ in range(500):  # bounded: the store answers within milliseconds
            for writes, receiver, key in ((c_transport.writes, server, "c"), (s_transport.writes, client, "s")):
                for data in writes[delivered[key] :]:
                    receiver.dataReceived(data)
                delivered[key] = len(writes)
            if client.answer is not None:
                break
            await deferLater(reactor, 0.01, lambda: None)
        client.connectionLost()
        server.connectionLost()
        result = await client.result
        self.assertIsInstance(result.answer, messages.OTPGrant)
        kinds = lambda writes: [[frame[0] for frame in netstrings(w)] for w in writes]  # noqa: E731
        # server: ServerHello, Certificate, CertificateVerify | Finished, grant, close_notify
        self.assertEqual(kinds(s_transport.writes), [[22, 22, 22], [22, 23, 21]])
