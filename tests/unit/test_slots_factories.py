"""Both daemons' factories with their connection slots, in memory: StringTransport and a Clock.

The first-message deadline, eviction of the oldest silent connection, a typed refusal when
every slot holds a connection that has spoken, and one log line per interval under load.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet import reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.credentials import test_ca
from tests.unit.test_party import alert_frame
from tests.unit.test_ttp_protocol import netstring, parse_netstrings
from tlsotp.alerts import Alert
from tlsotp.commands.ttp_daemon import makeService
from tlsotp.handshake import ClientConfig, ClientConnection
from tlsotp.pki.roles import Role
from tlsotp.services.bank_server import OTPServerFactory, OTPServerProtocol, ServerIdentity
from tlsotp.services.otp_authority import OTPAuthority, OTPPolicy
from tlsotp.services.ttp_server import EnrollmentServerFactory, EnrollmentServerProtocol
from tlsotp.ttp import wire
from tlsotp.ttp.issuer import Outcome
from tlsotp.ttp.wire import Refusal


def address(host: str) -> IPv4Address:
    return IPv4Address("TCP", host, 40000)


class ServerSlotsTests(unittest.TestCase):
    def setUp(self) -> None:
        ca = test_ca()
        server = ca.issue("bank.example", Role.SERVER)
        client = ca.issue("alice.example", Role.CLIENT)
        data_dir = Path(self.mktemp())
        data_dir.mkdir()
        authority = OTPAuthority(reactor, data_dir, OTPPolicy())  # type: ignore[arg-type]  # the global reactor provides IReactorFromThreads
        self.addCleanup(authority.close)
        self.clock = task.Clock()
        self.log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.factory = OTPServerFactory(
            ServerIdentity(server.key, server.chain, server.root), authority, timeout_seconds=30,
            first_message_timeout=5, max_connections=3, max_per_address=2, call_later=self.clock.callLater,
        )
        client_connection = ClientConnection(ClientConfig(client.chain, client.key, validate_peer=lambda chain: None))
        client_connection.initiate()
        (hello,) = client_connection.frames_to_send()
        self.client_hello = netstring(hello)

    def connect(self, host: str = "127.0.0.1") -> tuple[OTPServerProtocol, StringTransport]:
        protocol = self.factory.buildProtocol(address(host))
        transport = StringTransport(peerAddress=address(host))
        protocol.makeConnection(transport)
        return protocol, transport

    def lines(self) -> list[str]:
        return [formatEvent(e) for e in self.log if e.get("log_level") is not None and "tlsotp" in str(e.get("log_namespace"))]

    def test_first_message_deadline_is_separate_from_the_session_timeout(self) -> None:
        silent, silent_transport = self.connect()
        spoken, spoken_transport = self.connect("127.0.0.2")
        spoken.dataReceived(self.client_hello)
        server_flight = spoken_transport.value()
        self.assertTrue(server_flight)
        self.clock.advance(4.9)
        self.assertFalse(silent_transport.disconnecting)
        self.clock.advance(0.2)
        self.assertEqual(silent_transport.value(), alert_frame(Alert.handshake_failure))
        self.assertTrue(silent_transport.disconnecting)
        self.assertFalse(spoken_transport.disconnecting)  # it has the whole --timeout
        self.clock.advance(24.8)
        self.assertFalse(spoken_transport.disconnecting)
        self.clock.advance(0.2)
        self.assertEqual(spoken_transport.value(), server_flight + alert_frame(Alert.handshake_failure))

    def test_a_trickle_does_not_extend_the_first_message_deadline(self) -> None:
        protocol, transport = self.connect()
        for i in range(5):
            protocol.dataReceived(self.client_hello[i : i + 1])
            self.clock.advance(1.2)
        self.assertEqual(transport.value(), alert_frame(Alert.handshake_failure))

    def test_a_flood_from_the_clients_own_address_gives_way_to_it(self) -> None:
        idle = [self.connect() for _ in range(50)]
        evicted = [t for _, t in idle if t.disconnecting]
        self.assertEqual(len(evicted), 48)
        for transport in evicted:
            self.assertEqual(transport.value(), alert_frame(Alert.handshake_failure))
        real, real_transport = self.connect()
        self.assertFalse(real_transport.disconnecting)
        real.dataReceived(self.client_hello)
        for _ in range(50):
            self.connect()
        self.assertFalse(real_transport.disconnecting)
        self.assertNotIn(alert_frame(Alert.handshake_failure), real_transport.value())
        self.assertEqual(len(self.factory.slots.slots), 2)

    def test_full_of_speakers_refuses_with_an_alert(self) -> None:
        speakers = [self.connect(host) for host in ("10.0.0.1", "10.0.0.2", "10.0.0.3")]
        for protocol, _ in speakers:
            protocol.dataReceived(self.client_hello)
        _, refused = self.connect("10.0.0.4")
        self.assertEqual(refused.value(), alert_frame(Alert.internal_error))
        self.assertTrue(refused.disconnecting)
        _, refused_too = self.connect("10.0.0.1")  # its address is full of speakers as well
        self.assertEqual(refused_too.value(), alert_frame(Alert.internal_error))
        self.assertFalse(any(t.disconnecting for _, t in speakers))
        # One line at once, and a count at the end of the interval: not one line per connection.
        (line,) = self.lines()
        self.assertIn("refused a connection from 10.0.0.4", line)
        self.clock.advance(10)
        self.assertIn("1 connections refused", self.lines()[-1])

    def test_a_finished_session_frees_its_slot(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b"3:\x16\x01\x00,")  # garbage: refused at once
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.factory.slots.slots), 0)

    def test_peers_leaving_before_a_word_are_counted_not_logged_each(self) -> None:
        for i in range(5):
            protocol, _ = self.connect(f"10.0.1.{i}")
            protocol.connectionLost(Failure(ConnectionDone()))
        (line,) = self.lines()
        self.assertIn("10.0.1.0:40000: closed by the peer before sending anything", line)
        self.clock.advance(10)
        self.assertIn("4 connections closed by the peer before sending anything", self.lines()[-1])
        self.assertEqual(len(self.factory.slots.slots), 0)

    def test_stopping_the_factory_logs_what_is_counted(self) -> None:
        for _ in range(5):
            self.connect()
        self.assertEqual(len(self.clock.getDelayedCalls()), 5)  # two timers for each of two, and the interval
        self.factory.doStart()
        self.factory.doStop()
        self.assertEqual(len(self.clock.getDelayedCalls()), 4)
        self.assertIn("2 silent connections closed to make room", self.lines()[-1])


class TTPSlotsTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        self.pending: list[Deferred[Outcome]] = []
        self.factory = EnrollmentServerFactory(
            self.decide, timeout=30, first_message_timeout=5, max_connections=3, max_per_address=2,
            call_later=self.clock.callLater,
        )

    def decide(self, payload: bytes) -> Deferred[Outcome]:
        d: Deferred[Outcome] = Deferred()
        self.pending.append(d)
        return d

    def connect(self, host: str = "127.0.0.1") -> tuple[EnrollmentServerProtocol, StringTransport]:
        protocol = self.factory.buildProtocol(address(host))  # type: ignore[arg-type]
        transport = StringTransport(peerAddress=address(host))
        protocol.makeConnection(transport)
        return protocol, transport

    def refusal(self, transport: StringTransport) -> Refusal:
        (frame,) = parse_netstrings(transport.value())
        reply = wire.decode_reply(frame)
        assert isinstance(reply, wire.Refused), reply
        self.assertTrue(transport.disconnecting)
        return reply.code

    def ttp_lines(self) -> list[str]:
        return [formatEvent(e) for e in self.log if e.get("log_namespace") == "tlsotp.ttp"]

    def test_first_message_deadline(self) -> None:
        _, transport = self.connect()
        self.clock.advance(4.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.2)
        self.assertEqual(self.refusal(transport), Refusal.timeout)
        (line,) = self.ttp_lines()
        self.assertIn("no complete request within 5 s", line)

    def test_a_flood_gives_way_to_a_real_request(self) -> None:
        idle = [self.connect() for _ in range(40)]
        for _, transport in idle[:-2]:
            self.assertEqual(self.refusal(transport), Refusal.timeout)
        real, real_transport = self.connect()
        real.dataReceived(netstring(wire.encode(wire.CRLRequest())))
        self.assertEqual(len(self.pending), 1)
        for _ in range(40):
            self.connect()
        self.assertEqual(real_transport.value(), b"")
        self.pending[0].callback(Outcome(wire.Refused(Refusal.internal_error, "x"), "answered"))
        self.assertEqual(self.refusal(real_transport), Refusal.internal_error)
        self.assertEqual(len(self.ttp_lines()), 2)  # the first eviction, and the one answer
        self.clock.advance(10)
        self.assertIn("78 silent connections closed to make room", self.ttp_lines()[-1])

    def test_full_of_requests_refuses_internal_error(self) -> None:
        for host in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
            protocol, _ = self.connect(host)
            protocol.dataReceived(netstring(wire.encode(wire.CRLRequest())))
        _, refused = self.connect("10.0.0.4")
        self.assertEqual(self.refusal(refused), Refusal.internal_error)
        for d in self.pending:
            d.callback(Outcome(wire.Refused(Refusal.internal_error, "x"), "answered"))
        _, admitted = self.connect("10.0.0.4")
        self.assertEqual(admitted.value(), b"")
        self.assertFalse(admitted.disconnecting)

    def test_stop_cancels_the_interval(self) -> None:
        for _ in range(4):
            self.connect()
        self.assertEqual(len(self.clock.getDelayedCalls()), 3)  # two deadlines and the interval
        self.factory.doStart()
        self.factory.doStop()
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)



class DaemonOptionTests(unittest.SynchronousTestCase):
    """The slot options of both daemons reach their factories, and bad values are usage errors."""

    def test_ttp_options(self) -> None:
        from tlsotp.commands.ttp_daemon import Options, TTPService
        from tlsotp.ttp.ca import init_ca

        data_dir = Path(self.mktemp())
        init_ca(data_dir)
        base = ["--data-dir", str(data_dir)]
        for bad in (["--max-connections", "0"], ["--max-per-address", "-1"], ["--first-message-timeout", "0"]):
            with self.assertRaises(usage.UsageError, msg=bad):
                Options().parseOptions(base + bad)
        options = Options()
        options.parseOptions(base + ["--max-connections", "10", "--max-per-address", "4", "--first-message-timeout", "2"])
        service = makeService(options)
        assert isinstance(service, TTPService)
        self.assertEqual((service.factory.slots.slots.max_connections, service.factory.slots.slots.max_per_address), (10, 4))
        self.assertEqual(service.factory.buildProtocol(None)._timeout, 2)
        defaults = Options()
        defaults.parseOptions(base)
        self.assertEqual(
            (defaults["max-connections"], defaults["max-per-address"], defaults["first-message-timeout"]), (256, 32, 5.0)
        )

    def test_server_options(self) -> None:
        from tlsotp.commands.server_daemon import Options

        base = ["--data-dir", self.mktemp(), "--name", "bank.example", "--ca-fingerprint", "sha256:" + "00" * 32, "--token", "x"]
        for bad in (["--max-connections", "0"], ["--max-per-address", "0"], ["--first-message-timeout", "-5"]):
            with self.assertRaises(usage.UsageError, msg=bad):
                Options().parseOptions(base + bad)
