"""The TTP's network shell in memory: StringTransport, iosim pairs, MemoryReactor, task.Clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial import unittest

from tests.test_ttp_fixtures import TTPFixture, cached_key, enroll_request
from tlsotp.alerts import Alert, AlertError
from tlsotp.pki.keys import KeyType
from tlsotp.pki.roles import Role
from tlsotp.services.ttp_client import EnrollmentClientProtocol, TTPUnavailable, exchange
from tlsotp.services.ttp_server import EnrollmentServerFactory, EnrollmentServerProtocol
from tlsotp.ttp import wire
from tlsotp.ttp.issuer import Outcome
from tlsotp.ttp.wire import Refusal


def netstring(payload: bytes) -> bytes:
    return str(len(payload)).encode() + b":" + payload + b","


def parse_netstrings(data: bytes) -> list[bytes]:
    frames = []
    while data:
        length, _, rest = data.partition(b":")
        n = int(length)
        frames.append(rest[:n])
        assert rest[n : n + 1] == b",", data
        data = rest[n + 1 :]
    return frames


class ServerProtocolTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.ttp = TTPFixture(Path(self.mktemp()))
        self.addCleanup(self.ttp.close)
        self.clock = Clock()
        self.factory = EnrollmentServerFactory(self.decide, timeout=30, call_later=self.clock.callLater)
        self.log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        self.decisions = 0

    def decide(self, payload: bytes) -> Deferred[Outcome]:
        self.decisions += 1
        return succeed(self.ttp.issuer.handle(payload))

    def connect(self) -> tuple[EnrollmentServerProtocol, StringTransport]:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def replies(self, transport: StringTransport) -> list[wire.Reply]:
        return [wire.decode_reply(frame) for frame in parse_netstrings(transport.value())]

    def assertRefusedAndClosed(self, transport: StringTransport, code: Refusal) -> None:
        replies = self.replies(transport)
        self.assertEqual(len(replies), 1, replies)
        reply = replies[0]
        assert isinstance(reply, wire.Refused), reply
        self.assertEqual(reply.code, code, reply.detail)
        self.assertTrue(transport.disconnecting)
        lines = self.ttp_log_lines()
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(f"refused {code.name}", lines[0])

    def ttp_log_lines(self) -> list[str]:
        return [formatEvent(e) for e in self.log if e.get("log_namespace") == "tlsotp.ttp"]

    def test_enrollment_fed_one_byte_at_a_time(self) -> None:
        token = self.ttp.token()
        request = enroll_request(token, "bank.example", Role.SERVER, cached_key(KeyType.EC_P256, "proto"))
        protocol, transport = self.connect()
        data = netstring(wire.encode(request))
        for i in range(len(data)):
            protocol.dataReceived(data[i : i + 1])
        (reply,) = self.replies(transport)
        self.assertIsInstance(reply, wire.Issued)
        self.assertTrue(transport.disconnecting)
        (line,) = self.ttp_log_lines()
        self.assertIn("issued serial", line)
        self.assertNotIn(str(token).split(".")[1], line)  # never the token secret

    def test_malformed_netstrings_are_decode_errors(self) -> None:
        for data in (b"abc", b"3:abcX", b"03:abc,", b":", b"-1:"):
            self.log._events.clear()
            protocol, transport = self.connect()
            protocol.dataReceived(data)
            self.assertRefusedAndClosed(transport, Refusal.decode_error)
        self.assertEqual(self.decisions, 0)

    def test_over_length_is_refused_from_the_prefix_alone(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(str(wire.MAX_REQUEST_LENGTH + 1).encode() + b":")
        self.assertRefusedAndClosed(transport, Refusal.too_long)
        protocol, transport = self.connect()
        self.log._events.clear()
        protocol.dataReceived(b"9" * 40)  # no colon yet: the length alone is already too long
        self.assertRefusedAndClosed(transport, Refusal.too_long)
        self.assertEqual(self.decisions, 0)

    def test_largest_real_message_fits(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(str(wire.MAX_REQUEST_LENGTH).encode() + b":")
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)

    def test_unknown_message_type(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(netstring(b"\x09hello"))
        self.assertRefusedAndClosed(transport, Refusal.unknown_message)

    def test_garbage_csr_and_bad_proof(self) -> None:
        token = self.ttp.token()
        protocol, transport = self.connect()
        key = cached_key(KeyType.EC_P256, "proto")
        protocol.dataReceived(netstring(wire.encode(enroll_request(token, "bank.example", Role.SERVER, key, csr=b"junk"))))
        self.assertRefusedAndClosed(transport, Refusal.bad_csr)

    def test_idle_connection_times_out(self) -> None:
        protocol, transport = self.connect()
        self.clock.advance(29)
        self.assertEqual(transport.value(), b"")
        protocol.dataReceived(b"10:abc")  # a trickle does not extend the deadline
        self.clock.advance(1)
        self.assertRefusedAndClosed(transport, Refusal.timeout)
        protocol.dataReceived(b"defghij,")  # ignored: the connection is done
        self.assertEqual(len(parse_netstrings(transport.value())), 1)
        self.assertEqual(self.decisions, 0)

    def test_timer_stops_once_the_request_is_in(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(netstring(wire.encode(wire.CRLRequest())))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        protocol.connectionLost(Failure(ConnectionRefusedError()))

    def test_frames_after_the_request_are_ignored(self) -> None:
        protocol, transport = self.connect()
        frame = netstring(wire.encode(wire.CRLRequest()))
        protocol.dataReceived(frame + frame + b"garbage")
        self.assertEqual(len(self.replies(transport)), 1)
        self.assertEqual(self.decisions, 1)

    def test_handler_failure_is_internal_error(self) -> None:
        self.factory.handle = lambda payload: fail(RuntimeError("boom"))
        protocol, transport = self.connect()
        protocol.dataReceived(netstring(wire.encode(wire.CRLRequest())))
        self.assertRefusedAndClosed(transport, Refusal.internal_error)
        self.assertNotIn("boom", str(self.replies(transport)[0]))  # the cause is logged, not sent

    def test_reply_after_the_peer_left_is_logged_not_sent(self) -> None:
        pending: Deferred[Outcome] = Deferred()
        self.factory.handle = lambda payload: pending
        protocol, transport = self.connect()
        protocol.dataReceived(netstring(wire.encode(wire.CRLRequest())))
        transport.loseConnection()
        protocol.connectionLost(Failure(ConnectionRefusedError()))
        transport.clear()
        pending.callback(self.ttp.issuer.handle(wire.encode(wire.CRLRequest())))
        self.assertEqual(transport.value(), b"")
        self.assertEqual(len(self.ttp_log_lines()), 1)


class PairTests(unittest.SynchronousTestCase):
    """Real client and server protocols connected in memory by iosim."""

    def setUp(self) -> None:
        self.ttp = TTPFixture(Path(self.mktemp()))
        self.addCleanup(self.ttp.close)

    def pair(self, request: wire.Request) -> tuple[EnrollmentClientProtocol, iosim.IOPump]:
        factory = EnrollmentServerFactory(lambda p: succeed(self.ttp.issuer.handle(p)), timeout=30, call_later=Clock().callLater)
        server = factory.buildProtocol(None)
        client = EnrollmentClientProtocol(wire.encode(request))
        pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client))
        return client, pump

    def test_enroll_and_crl(self) -> None:
        token = self.ttp.token()
        client, pump = self.pair(enroll_request(token, "bank.example", Role.SERVER, cached_key(KeyType.EC_P256, "pair")))
        pump.flush()
        self.assertIsInstance(self.successResultOf(client.reply), wire.Issued)
        client, pump = self.pair(wire.CRLRequest())
        pump.flush()
        self.assertIsInstance(self.successResultOf(client.reply), wire.CRLReply)

    def test_refusal_arrives_as_a_reply(self) -> None:
        token = self.ttp.token()
        client, pump = self.pair(enroll_request(token, "bank.example", Role.CLIENT, cached_key(KeyType.EC_P256, "pair")))
        pump.flush()
        reply = self.successResultOf(client.reply)
        assert isinstance(reply, wire.Refused)
        self.assertEqual(reply.code, Refusal.role_mismatch)


class ClientProtocolTests(unittest.SynchronousTestCase):
    def connect(self) -> tuple[EnrollmentClientProtocol, StringTransport]:
        protocol = EnrollmentClientProtocol(wire.encode(wire.CRLRequest()))
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertEqual(transport.value(), netstring(wire.encode(wire.CRLRequest())))
        return protocol, transport

    def test_reply_fed_one_byte_at_a_time(self) -> None:
        protocol, transport = self.connect()
        data = netstring(wire.encode(wire.Refused(Refusal.internal_error, "busy")))
        for i in range(len(data)):
            protocol.dataReceived(data[i : i + 1])
        self.assertEqual(self.successResultOf(protocol.reply), wire.Refused(Refusal.internal_error, "busy"))
        self.assertTrue(transport.disconnecting)

    def test_malformed_reply(self) -> None:
        for data in (b"x", netstring(b"\x81\x00"), str(wire.MAX_REPLY_LENGTH + 1).encode() + b":"):
            protocol, transport = self.connect()
            protocol.dataReceived(data)
            failure = self.failureResultOf(protocol.reply, AlertError)
            self.assertEqual(failure.value.alert, Alert.decode_error)

    def test_hang_up_without_reply(self) -> None:
        protocol, transport = self.connect()
        protocol.connectionLost(Failure(ConnectionRefusedError()))
        self.failureResultOf(protocol.reply, TTPUnavailable)


class ExchangeTests(unittest.SynchronousTestCase):
    def test_timeout_is_a_clear_error(self) -> None:
        reactor = MemoryReactorClock()
        d = exchange(reactor, "tcp:host=127.0.0.1:port=7000", wire.CRLRequest(), timeout=5)
        host, port, *_ = reactor.tcpClients[0]
        self.assertEqual((host, port), ("127.0.0.1", 7000))
        reactor.advance(5)
        failure = self.failureResultOf(d, TTPUnavailable)
        self.assertIn("within 5 s", str(failure.value))

    def test_timeout_after_connecting_aborts_the_connection(self) -> None:
        reactor = MemoryReactorClock()
        d = exchange(reactor, "tcp:host=127.0.0.1:port=7000", wire.CRLRequest(), timeout=5)
        factory: Any = reactor.tcpClients[0][2]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertNoResult(d)
        reactor.advance(5)
        self.failureResultOf(d, TTPUnavailable)
        self.assertTrue(transport.disconnecting)

    def test_connection_refused_is_a_clear_error(self) -> None:
        reactor = MemoryReactorClock()
        d = exchange(reactor, "tcp:host=127.0.0.1:port=7000", wire.CRLRequest(), timeout=5)
        factory: Any = reactor.tcpClients[0][2]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        failure = self.failureResultOf(d, TTPUnavailable)
        self.assertIn("cannot connect", str(failure.value))
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_bad_endpoint(self) -> None:
        self.failureResultOf(exchange(MemoryReactorClock(), "nonsense:x", wire.CRLRequest(), timeout=5), TTPUnavailable)
