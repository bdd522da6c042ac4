"""The small services the daemons are made of, in memory: listening, periodic tasks, draining,
and the one database worker both stores use."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import CannotListenError, ConnectError, ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.test.proto_helpers import EventLoggingObserver
from twisted.trial import unittest
from zope.interface import implementer  # type: ignore[import-untyped, unused-ignore]

from tests.credentials import test_ca
from tests.test_ttp_fixtures import mint_token, reactor
from tlsotp.pki.roles import Role
from tlsotp.server import BankServerSettings, RootPin
from tlsotp.server import build_service as build_bank
from tlsotp.services.bank_server import OTPServerFactory, ServerIdentity
from tlsotp.services.daemon_services import ConnectionDrain, ListeningService, PeriodicTask
from tlsotp.services.otp_authority import OTPAuthority, OTPPolicy
from tlsotp.services.sqlite_worker import DatabaseWorker, WorkerNotRunning
from tlsotp.services.ttp_server import EnrollmentServerFactory
from tlsotp.services.ttp_service import TTPSettings
from tlsotp.services.ttp_service import build_service as build_ttp
from tlsotp.ttp import wire
from tlsotp.ttp.ca import init_ca


@implementer(IStreamServerEndpoint)
class RefusingEndpoint:
    def listen(self, factory: Any) -> Deferred[Any]:
        return fail(CannotListenError("127.0.0.1", 7001, OSError("Address already in use")))


class ListeningServiceTests(unittest.SynchronousTestCase):
    def test_listening_fires_with_the_port_and_stop_closes_it(self) -> None:
        memory = MemoryReactor()
        service = ListeningService(TCP4ServerEndpoint(memory, 0, interface="127.0.0.1"), Factory.forProtocol(Protocol))
        service.startService()
        port = self.successResultOf(service.listening)
        self.assertIs(service.port, port)
        self.assertEqual(len(memory.tcpServers), 1)
        self.successResultOf(service.stopService())
        self.assertIsNone(service.port)

    def test_a_failed_listen_fails_listening_and_logs_nothing(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        service = ListeningService(RefusingEndpoint(), Factory.forProtocol(Protocol))
        service.privilegedStartService()
        self.failureResultOf(service.listening, CannotListenError)
        self.assertEqual([e for e in events if e.get("log_failure") is not None], [])
        self.successResultOf(service.stopService())

    def test_stopping_a_service_that_never_listened(self) -> None:
        service = ListeningService(RefusingEndpoint(), Factory.forProtocol(Protocol))
        self.successResultOf(service.stopService())


class PeriodicTaskTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.runs = 0
        self.waiting: list[Deferred[None]] = []
        self.cancelled = 0

    async def task(self) -> None:
        self.runs += 1

        def cancel(_: Deferred[None]) -> None:
            self.cancelled += 1

        waiting: Deferred[None] = Deferred(cancel)
        self.waiting.append(waiting)
        await waiting

    def test_skip_first_waits_one_interval(self) -> None:
        timer = PeriodicTask(10, self.task, clock=self.clock, skip_first=True)
        timer.startService()
        self.assertEqual(self.runs, 0)
        self.clock.advance(10)
        self.assertEqual(self.runs, 1)
        self.waiting[-1].callback(None)
        self.clock.advance(10)
        self.assertEqual(self.runs, 2)
        self.waiting[-1].callback(None)
        self.successResultOf(timer.stopService())

    def test_stop_cancels_the_run_under_way_and_fires_at_once(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        timer = PeriodicTask(10, self.task, clock=self.clock)
        timer.startService()
        self.assertEqual(self.runs, 1)  # at once, like TimerService
        stopped = timer.stopService()
        self.successResultOf(stopped)
        self.assertEqual(self.cancelled, 1)
        self.assertFalse(timer.running)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual([e for e in events if e.get("log_failure") is not None], [])  # no traceback

    def test_stop_between_runs(self) -> None:
        timer = PeriodicTask(10, self.task, clock=self.clock)
        timer.startService()
        self.waiting[-1].callback(None)
        self.successResultOf(timer.stopService())
        self.assertEqual(self.cancelled, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class Tracked(Protocol):
    """A protocol that reports to a ConnectionDrain, as the daemons' protocols do."""

    def __init__(self, connections: ConnectionDrain) -> None:
        self.connections = connections

    def connectionMade(self) -> None:
        self.connections.opened(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connections.closed(self)


class ConnectionDrainTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.connections = ConnectionDrain(self.clock)

    def connect(self) -> tuple[Tracked, StringTransport]:
        transport = StringTransport()
        protocol = Tracked(self.connections)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_nothing_open_is_drained_at_once(self) -> None:
        self.assertEqual(self.successResultOf(self.connections.drain(5)), 0)

    def test_drained_when_the_last_connection_ends(self) -> None:
        first, _ = self.connect()
        second, _ = self.connect()
        self.assertEqual(self.connections.open_connections, 2)
        drained = self.connections.drain(5)
        first.connectionLost(Failure(Exception("done")))
        self.assertNoResult(drained)
        second.connectionLost(Failure(Exception("done")))
        self.assertEqual(self.successResultOf(drained), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])  # the deadline is cancelled
        self.assertEqual(self.connections.open_connections, 0)

    def test_at_the_deadline_the_rest_are_aborted(self) -> None:
        done, _ = self.connect()
        stuck, transport = self.connect()
        drained = self.connections.drain(5)
        done.connectionLost(Failure(Exception("done")))
        self.clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertNoResult(drained)
        stuck.connectionLost(Failure(Exception("aborted")))
        self.assertEqual(self.successResultOf(drained), 1)


class FactoriesReportTheirConnectionsTests(unittest.TestCase):
    """Both daemons' protocols report to the factory's ConnectionDrain: opened first thing in
    connectionMade, closed first thing in connectionLost, so that a drain goes on (and the
    store closes) before the protocol's own end, where Twisted's WrappingFactory unregistered."""

    def test_the_bank_server(self) -> None:
        ca = test_ca()
        server = ca.issue("bank.example", Role.SERVER)
        data_dir = Path(self.mktemp())
        data_dir.mkdir()
        authority = OTPAuthority(reactor, data_dir, OTPPolicy())
        self.addCleanup(authority.close)
        connections = ConnectionDrain(Clock())
        factory = OTPServerFactory(
            ServerIdentity(server.key, server.chain, server.root), authority, call_later=Clock().callLater,
            connections=connections,
        )
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        protocol.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000)))
        self.assertEqual(list(connections.protocols), [protocol])
        self.assertEqual(factory.open_connections, 1)
        open_when_drained: list[int] = []
        connections.drain(60).addCallback(lambda _: open_when_drained.append(factory.open_connections))
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(open_when_drained, [1])  # before the protocol's own connectionLost
        self.assertEqual((connections.open_connections, factory.open_connections), (0, 0))

    def test_the_ttp(self) -> None:
        connections = ConnectionDrain(Clock())
        factory = EnrollmentServerFactory(lambda request: Deferred(), call_later=Clock().callLater, connections=connections)
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.assertEqual(connections.open_connections, 0)
        protocol.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000)))
        self.assertEqual(list(connections.protocols), [protocol])
        in_slots_when_drained: list[bool] = []
        connections.drain(60).addCallback(lambda _: in_slots_when_drained.append(protocol in factory.slots.slots))
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(in_slots_when_drained, [True])  # before the protocol released its slot
        self.assertEqual(connections.open_connections, 0)
        self.assertNotIn(protocol, factory.slots.slots)


class DatabaseWorkerTests(unittest.TestCase):
    def worker(self, path: Path) -> DatabaseWorker[sqlite3.Connection]:
        def open_connection() -> sqlite3.Connection:
            connection = sqlite3.connect(path, check_same_thread=False)
            connection.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
            return connection

        return DatabaseWorker(reactor, open_connection, sqlite3.Connection.close, "test-db")

    async def test_calls_run_in_order_on_one_thread_and_stop_waits_for_them(self) -> None:
        path = Path(self.mktemp())
        worker = self.worker(path)
        self.assertIsInstance(self.failureResultOf(worker.run(lambda c: None)).value, WorkerNotRunning)
        worker.startService()
        threads: set[int] = set()

        def insert(connection: sqlite3.Connection, n: int) -> int:
            threads.add(threading.get_ident())
            with connection:
                connection.execute("INSERT INTO t VALUES (?)", (n,))
            return n

        calls = [worker.run(insert, n) for n in range(20)]
        await worker.stopService()  # queued before the stop: all of them run, then it closes
        self.assertEqual([self.successResultOf(call) for call in calls], list(range(20)))
        self.assertEqual(len(threads), 1)
        self.assertNotIn(threading.get_ident(), threads)
        with sqlite3.connect(path) as check:
            self.assertEqual([n for (n,) in check.execute("SELECT n FROM t ORDER BY rowid")], list(range(20)))
        self.assertIsInstance(self.failureResultOf(worker.run(insert, 99)).value, WorkerNotRunning)

    def test_a_resource_that_cannot_open_stops_the_start(self) -> None:
        def refuse() -> sqlite3.Connection:
            raise sqlite3.OperationalError("unable to open database file")

        worker: DatabaseWorker[sqlite3.Connection] = DatabaseWorker(reactor, refuse, sqlite3.Connection.close)
        with self.assertRaises(sqlite3.OperationalError):
            worker.startService()
        self.assertFalse(worker.running)
        self.assertIsNone(self.successResultOf(worker.stopService()))

    async def test_a_call_that_raises_fails_alone_and_the_close_runs_on_the_worker_thread(self) -> None:
        closed_on: list[threading.Thread] = []

        def close(connection: sqlite3.Connection) -> None:
            closed_on.append(threading.current_thread())
            connection.close()

        worker: DatabaseWorker[sqlite3.Connection] = DatabaseWorker(
            reactor, lambda: sqlite3.connect(":memory:", check_same_thread=False), close, "test-db"
        )
        worker.startService()
        ran_on: list[threading.Thread] = []

        def boom(connection: sqlite3.Connection) -> int:
            ran_on.append(threading.current_thread())
            raise KeyError("boom")

        def exits(connection: sqlite3.Connection) -> int:
            raise SystemExit(3)  # not an Exception: still this call's failure, not the thread's end

        first, second = worker.run(boom), worker.run(exits)
        third = worker.run(lambda connection: connection.execute("SELECT 41 + 1").fetchone()[0])
        await worker.stopService()
        failure = self.failureResultOf(first, KeyError)
        self.assertIsNotNone(failure.tb)  # made on the worker thread, where it was raised
        self.failureResultOf(second, SystemExit)
        self.assertEqual(self.successResultOf(third), 42)
        self.assertEqual(len(ran_on), 1)
        self.assertEqual(closed_on, ran_on)  # closed by the thread that ran the calls...
        self.assertEqual(ran_on[0].name, "test-db")
        self.assertFalse(ran_on[0].is_alive())  # ...which stopService has joined

    def test_stop_now_closes_on_the_calling_thread_and_joins_the_worker(self) -> None:
        closed_on: list[threading.Thread] = []

        def close(connection: sqlite3.Connection) -> None:
            closed_on.append(threading.current_thread())
            connection.close()

        before = set(threading.enumerate())
        worker: DatabaseWorker[sqlite3.Connection] = DatabaseWorker(
            reactor, lambda: sqlite3.connect(":memory:", check_same_thread=False), close, "test-db"
        )
        worker.startService()
        (started,) = set(threading.enumerate()) - before
        worker.stop_now()  # no reactor turn needed
        self.assertFalse(started.is_alive())
        self.assertEqual(closed_on, [threading.current_thread()])
        self.assertFalse(worker.running)
        self.assertIsInstance(self.failureResultOf(worker.run(lambda c: None)).value, WorkerNotRunning)



class Raw(Protocol):
    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


async def refused(port: int) -> bool:
    try:
        protocol = await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(Protocol))
    except ConnectionRefusedError:
        return True
    except ConnectError:  # reset: it was in the backlog as the port closed; try again
        return False
    cast(Any, protocol).transport.loseConnection()
    return False


class BuiltFromSettingsTests(unittest.TestCase):
    """Both daemons' services built straight from their settings, as README's embedding shows."""

    async def test_a_stopping_ttp_refuses_newcomers_and_answers_a_request_in_flight(self) -> None:
        data_dir = Path(self.mktemp())
        ca = init_ca(data_dir)
        ttp = build_ttp(TTPSettings(
            data_dir=data_dir, ca=ca, listen="tcp:0:interface=127.0.0.1", first_message_timeout=60, drain_timeout=60,
        ), reactor)
        ttp.startService()
        assert ttp.port is not None
        port = cast(Any, ttp.port).getHost().port
        held = Raw()  # from another address: the probes below cannot evict it to make room
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=("127.0.0.2", 0)).connect(
            Factory.forProtocol(lambda: held)
        )
        for _ in range(500):  # connected here; accepted there, soon
            if ttp.connections.open_connections:
                break
            await deferLater(reactor, 0.01, lambda: None)
        else:
            self.fail("the TTP did not accept the connection")
        stopping = ttp.stopService()
        for _ in range(200):
            if await refused(port):
                break
            await deferLater(reactor, 0.02, lambda: None)
        else:
            self.fail("the TTP still accepts connections while stopping")
        self.assertNoResult(stopping)
        request = wire.encode(wire.CRLRequest())
        cast(Any, held.transport).write(b"%d:%s," % (len(request), request))
        await stopping  # the held request is answered, then the store closes
        length, _, rest = held.received.partition(b":")
        reply = wire.decode_reply(rest[: int(length)])
        self.assertIsInstance(reply, wire.CRLReply)

    async def test_bank_server_from_settings_starts_and_stops(self) -> None:
        base = Path(self.mktemp()).resolve()
        ttp_dir = base / "ttp"
        ca = init_ca(ttp_dir)
        ttp = build_ttp(TTPSettings(data_dir=ttp_dir, ca=ca, listen="tcp:0:interface=127.0.0.1"), reactor)
        ttp.startService()
        self.addCleanup(ttp.stopService)
        settings = BankServerSettings(
            data_dir=base / "bank", name="Bank.Example", listen="tcp:0:interface=127.0.0.1",
            ttp=f"tcp:host=127.0.0.1:port={cast(Any, ttp.port).getHost().port}",
            pin=RootPin.from_fingerprint(ca.fingerprint), token=str(mint_token(ttp_dir, "bank.example", Role.SERVER)),
            drain_timeout=1.0,
        )
        self.assertEqual(settings.name, "bank.example")
        bank = build_bank(settings, reactor)
        bank.startService()
        await bank.ready
        self.assertIsNotNone(bank.port)
        self.assertIsNotNone(bank.factory)
        self.assertEqual({type(child).__name__ for child in bank}, {"SQLiteGroupWorker", "ListeningService", "PeriodicTask"})
        await bank.stopService()
        self.assertFalse(bank.running)
        self.assertFalse(any(child.running for child in bank))


class RestartTests(unittest.TestCase):
    async def test_both_services_start_again_after_a_stop(self) -> None:
        base = Path(self.mktemp()).resolve()
        ttp_dir = base / "ttp"
        ca = init_ca(ttp_dir)
        ttp = build_ttp(TTPSettings(data_dir=ttp_dir, ca=ca, listen="tcp:0:interface=127.0.0.1"), reactor)
        ttp.startService()
        await ttp.stopService()
        ttp.startService()
        self.addCleanup(ttp.stopService)
        assert ttp.port is not None
        endpoint = f"tcp:host=127.0.0.1:port={cast(Any, ttp.port).getHost().port}"
        bank = build_bank(BankServerSettings(
            data_dir=base / "bank", name="bank.example", listen="tcp:0:interface=127.0.0.1", ttp=endpoint,
            pin=RootPin.from_fingerprint(ca.fingerprint), token=str(mint_token(ttp_dir, "bank.example", Role.SERVER)),
        ), reactor)
        for _ in range(2):
            bank.startService()
            await bank.ready
            self.assertEqual(len(list(bank)), 5)  # worker, listener, CRL, renewal and prune timers
            await bank.stopService()
