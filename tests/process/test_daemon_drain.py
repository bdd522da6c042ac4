"""SIGTERM drains a real ``twistd -n tlsotp-server``, and both daemons share one exit-status rule.

The TTP runs in this process (``build_service``), the bank server as a real twistd subprocess
listening on port 0 (its port is read from its log). On SIGTERM the server must stop accepting
at once, let a session already accepted finish, and not wait for a CRL refresh stuck on a TTP
that never answers.
"""

from __future__ import annotations

import re
import signal
import sys
import time
from pathlib import Path
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.protocols.portforward import ProxyFactory
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.processes import TLSOTP, TWISTD, listen_backlog, subprocess_env
from tests.test_ttp_fixtures import mint_token, reactor
from tests.unit.test_daemon_services import refused
from tlsotp.pki.credentials import RootPin
from tlsotp.pki.roles import Role
from tlsotp.services.enrollment import enroll
from tlsotp.services.ttp_service import TTPSettings, build_service
from tlsotp.ttp.ca import init_ca

WAIT_SECONDS = 30.0
#: Far longer than any wait below: a test that waited for it would fail its own bound first.
LONG_TIMEOUT = "120"
SERVER_NAME = "bank.example"
CLIENT_NAME = "alice.example"


async def eventually(condition: Any, what: str, seconds: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.05, lambda: None)


class Daemon(ProcessProtocol):
    """A twistd subprocess logging to stdout; ``listening`` fires with the port from its log."""

    def __init__(self, pattern: bytes) -> None:
        self.output = b""
        self.pattern = re.compile(pattern)
        self.listening: Deferred[int] = Deferred()
        #: The exit status, or -SIGNAL (twistd ends itself with the signal that stopped it).
        self.ended: Deferred[int] = Deferred()
        self.status: int | None = None

    def outReceived(self, data: bytes) -> None:
        self.output += data
        match = self.pattern.search(self.output)
        if match and not self.listening.called:
            self.listening.callback(int(match.group(1)))

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        code, signal = getattr(reason.value, "exitCode", None), getattr(reason.value, "signal", None)
        self.status = code if code is not None else -int(signal or 0)
        if not self.listening.called:
            self.listening.errback(AssertionError(f"twistd ended before listening:\n{self.log}"))
        self.ended.callback(self.status)

    @property
    def log(self) -> str:
        return self.output.decode(errors="replace")

    def signal(self, name: str) -> None:
        try:
            cast(Any, self.transport).signalProcess(name)
        except ProcessExitedAlready:
            pass


def spawn_twistd(testcase: unittest.TestCase, plugin: str, *args: str, pattern: bytes) -> Daemon:
    daemon = Daemon(pattern)
    cwd = Path(testcase.mktemp()).resolve()
    cwd.mkdir()
    argv = [*TWISTD, "-n", "--pidfile", "", "--logfile", "-", plugin, *args]
    reactor.spawnProcess(daemon, sys.executable, argv, env=subprocess_env(), path=str(cwd))

    def kill() -> Deferred[int] | None:
        if daemon.ended.called:
            return None
        daemon.signal("KILL")
        return daemon.ended

    testcase.addCleanup(kill)
    return daemon


def start_ttp(testcase: unittest.TestCase, ttp_dir: Path) -> tuple[str, str]:
    """A new CA in ``ttp_dir`` served in this process; its endpoint string and root fingerprint."""
    ca = init_ca(ttp_dir)
    ttp = build_service(TTPSettings(data_dir=ttp_dir, ca=ca, listen="tcp:0:interface=127.0.0.1"), reactor)
    ttp.startService()
    testcase.addCleanup(ttp.stopService)
    return f"tcp:host=127.0.0.1:port={cast(Any, ttp.port).getHost().port}", ca.fingerprint


def accept_backlog(port: int) -> int:
    """``tests.processes.listen_backlog``, failing the test when nothing listens on ``port``."""
    backlog = listen_backlog(port)
    if backlog is None:
        raise AssertionError(f"nothing listens on 127.0.0.1:{port}")
    return backlog


async def until_accepted(port: int) -> None:
    """Our connect completed in the kernel; wait until the daemon has accepted it too."""
    await eventually(lambda: accept_backlog(port) == 0, f"the daemon on {port} to accept the connection")


SERVER_LISTENING = rb"tlsotp-server \S+ listening on 127\.0\.0\.1:(\d+)"


class Held(Protocol):
    """A connection to the server opened before SIGTERM; later relayed to a real client."""

    def __init__(self) -> None:
        self.relay: Protocol | None = None
        self.pending = b""
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if self.relay is not None:
            cast(Any, self.relay.transport).write(data)
        else:
            self.pending += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.relay is not None:
            cast(Any, self.relay.transport).loseConnection()
        self.lost.callback(None)


class Relay(Protocol):
    def __init__(self, held: Held) -> None:
        self.held = held

    def connectionMade(self) -> None:
        self.held.relay = self
        if self.held.pending:
            cast(Any, self.transport).write(self.held.pending)

    def dataReceived(self, data: bytes) -> None:
        cast(Any, self.held.transport).write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        cast(Any, self.held.transport).loseConnection()


class SwitchableTTP(Factory):
    """Forwards to the real TTP, or once ``silent``, accepts and never answers."""

    def __init__(self, port: int) -> None:
        self.forward = ProxyFactory("127.0.0.1", port)
        self.silent = False
        self.held: list[Protocol] = []

    def buildProtocol(self, addr: Any) -> Protocol | None:
        if self.silent:
            protocol = Protocol()
            self.held.append(protocol)
            return protocol
        return self.forward.buildProtocol(addr)  # type: ignore[no-any-return]


class BankServerDrainTests(unittest.TestCase):
    def assertStoppedCleanly(self, server: Daemon, status: int) -> None:
        # twistd stops its services, then ends itself with the signal it got (or exits 0).
        self.assertIn(status, (0, -signal.SIGTERM), server.log)
        self.assertIn("Server Shut Down.", server.log)

    async def start_ttp(self) -> tuple[Path, str, str]:
        self.base = Path(self.mktemp()).resolve()
        self.ttp_dir = self.base / "ttp"
        endpoint, fingerprint = start_ttp(self, self.ttp_dir)
        return self.ttp_dir, endpoint, fingerprint

    def start_server(self, ttp: str, fingerprint: str, *extra: str) -> Daemon:
        return spawn_twistd(
            self, "tlsotp-server", "--data-dir", str(self.base / "bank"), "--name", SERVER_NAME,
            "--listen", "tcp:0:interface=127.0.0.1", "--ttp", ttp, "--ca-fingerprint", fingerprint,
            "--token", str(mint_token(self.ttp_dir, SERVER_NAME, Role.SERVER)), *extra,
            pattern=SERVER_LISTENING,
        )

    async def test_sigterm_refuses_new_connections_and_lets_an_accepted_session_finish(self) -> None:
        ttp_dir, ttp, fingerprint = await self.start_ttp()
        server = self.start_server(
            ttp, fingerprint, "--first-message-timeout", LONG_TIMEOUT, "--timeout", LONG_TIMEOUT,
            "--drain-timeout", LONG_TIMEOUT,
        )
        port = await server.listening.addTimeout(WAIT_SECONDS, reactor)
        client_dir = self.base / "alice"
        await enroll(
            reactor, ttp, data_dir=client_dir, pin=RootPin.from_fingerprint(fingerprint),
            token=str(mint_token(ttp_dir, CLIENT_NAME, Role.CLIENT)), name=CLIENT_NAME, role=Role.CLIENT,
        )
        # A connection the server accepted before SIGTERM, its session not yet begun; from
        # another address, so that the probes below can never evict it to make room.
        held = Held()
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=("127.0.0.2", 0)).connect(
            Factory.forProtocol(lambda: held)
        )
        self.addCleanup(lambda: cast(Any, held.transport).loseConnection())
        await until_accepted(port)
        server.signal("TERM")

        # The port closes at once, while the accepted connection is still open.
        closed: list[bool] = []

        async def check() -> None:
            closed.append(await refused(port))

        deadline = time.monotonic() + WAIT_SECONDS
        while not closed or not closed[-1]:
            self.assertLess(time.monotonic(), deadline, f"the port still accepts after SIGTERM:\n{server.log}")
            await check()
            await deferLater(reactor, 0.02, lambda: None)
        self.assertFalse(held.lost.called, f"the accepted connection was dropped:\n{server.log}")
        self.assertFalse(server.ended.called, server.log)

        # A real client now runs its whole session over that accepted connection.
        relay: IListeningPort = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
            Factory.forProtocol(lambda: Relay(held))
        )
        self.addCleanup(relay.stopListening)
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            [*TLSOTP[1:], "client", "--data-dir", str(client_dir), "--ttp", ttp,
             "--server", f"tcp:host=127.0.0.1:port={relay.getHost().port}",  # type: ignore[attr-defined]
             "--server-name", SERVER_NAME, "--transaction", "Rs 10 during shutdown"],
            env=subprocess_env(), reactor=reactor,
        )
        self.assertEqual(code, 0, (out + err).decode() + server.log)
        self.assertIn(b"The OTP for transferring Rs 10 during shutdown is", out)
        status = await server.ended.addTimeout(WAIT_SECONDS, reactor)
        self.assertStoppedCleanly(server, status)
        self.assertIn("issued an OTP to alice.example", server.log)
        self.assertNotIn("Traceback", server.log)

    async def test_past_the_drain_timeout_the_sessions_left_are_closed(self) -> None:
        _, ttp, fingerprint = await self.start_ttp()
        server = self.start_server(
            ttp, fingerprint, "--first-message-timeout", LONG_TIMEOUT, "--timeout", LONG_TIMEOUT,
            "--drain-timeout", "0.5",
        )
        port = await server.listening.addTimeout(WAIT_SECONDS, reactor)
        held = Held()  # accepted, and never says a word
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(lambda: held))
        self.addCleanup(lambda: cast(Any, held.transport).loseConnection())
        await until_accepted(port)
        server.signal("TERM")
        status = await server.ended.addTimeout(WAIT_SECONDS, reactor)  # not the 120 s timeouts
        self.assertStoppedCleanly(server, status)
        await held.lost.addTimeout(WAIT_SECONDS, reactor)
        self.assertIn("drain deadline reached: closing the 1 connection(s) still open", server.log)
        self.assertNotIn("Traceback", server.log)

    async def test_sigterm_during_a_crl_refresh_from_a_silent_ttp_exits_promptly(self) -> None:
        _, ttp, fingerprint = await self.start_ttp()
        real_port = int(ttp.rsplit("=", 1)[1])
        front = SwitchableTTP(real_port)
        listening = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(front)
        self.addCleanup(listening.stopListening)

        def release() -> None:
            for protocol in front.held:
                if protocol.transport is not None:
                    protocol.transport.loseConnection()

        self.addCleanup(release)
        front_endpoint = f"tcp:host=127.0.0.1:port={listening.getHost().port}"
        server = self.start_server(front_endpoint, fingerprint, "--crl-refresh", "0.2", "--timeout", LONG_TIMEOUT)
        await server.listening.addTimeout(WAIT_SECONDS, reactor)
        front.silent = True  # every refresh from now on waits on a TTP that never answers
        await eventually(lambda: front.held, "a CRL refresh to reach the silent TTP")
        began = time.monotonic()
        server.signal("TERM")
        status = await server.ended.addTimeout(WAIT_SECONDS, reactor)  # --timeout is 120 s
        self.assertLess(time.monotonic() - began, WAIT_SECONDS)
        self.assertStoppedCleanly(server, status)
        self.assertNotIn("Traceback", server.log)
        after_sigterm = server.log.partition("Received SIGTERM")[2]
        self.assertNotIn("CRL refresh failed", after_sigterm)  # cancelled, not a failure

    async def test_sigterm_while_enrolling_with_a_silent_ttp_stops_quietly(self) -> None:
        front = SwitchableTTP(0)
        front.silent = True
        listening = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(front)
        self.addCleanup(listening.stopListening)
        self.addCleanup(lambda: [cast(Any, p.transport).loseConnection() for p in front.held if p.transport])
        base = Path(self.mktemp()).resolve()
        server = spawn_twistd(
            self, "tlsotp-server", "--data-dir", str(base / "bank"), "--name", SERVER_NAME,
            "--listen", "tcp:0:interface=127.0.0.1", "--ttp", f"tcp:host=127.0.0.1:port={listening.getHost().port}",
            "--ca-fingerprint", "sha256:" + "ab" * 32, "--timeout", LONG_TIMEOUT,
            "--token", "AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            pattern=SERVER_LISTENING,
        )
        server.listening.addErrback(lambda _: None)
        await eventually(lambda: front.held, "the enrollment to reach the silent TTP")
        server.signal("TERM")
        status = await server.ended.addTimeout(WAIT_SECONDS, reactor)  # --timeout is 120 s
        # Start-up runs before twistd's reactor (so that a daemonized launcher sees its
        # outcome): SIGTERM then ends it there, with exit 0 and one line, before any shutdown.
        self.assertEqual(status, 0, server.log)
        self.assertEqual(server.log.count("tlsotp-server stopped while starting"), 1, server.log)
        self.assertNotIn("cannot start", server.log)
        self.assertNotIn("Traceback", server.log)


class ListenFailureTests(unittest.TestCase):
    """A port already in use: exit 1 and one line saying so, for the TTP and the bank server."""

    async def taken_port(self) -> int:
        taken = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Factory.forProtocol(Protocol))
        self.addCleanup(taken.stopListening)
        return int(taken.getHost().port)

    def assertOneLine(self, daemon: Daemon, status: int, text: str) -> None:
        self.assertEqual(status, 1, daemon.log)
        self.assertNotIn("Traceback", daemon.log)
        self.assertEqual(len([line for line in daemon.log.splitlines() if text in line]), 1, daemon.log)

    async def test_ttp_port_in_use_exits_1(self) -> None:
        data_dir = Path(self.mktemp()).resolve()
        init_ca(data_dir)
        port = await self.taken_port()
        ttp = spawn_twistd(
            self, "tlsotp-ttp", "--data-dir", str(data_dir), "--listen", f"tcp:{port}:interface=127.0.0.1",
            pattern=rb"serving on 127\.0\.0\.1:(\d+)",
        )
        status = await ttp.ended.addTimeout(WAIT_SECONDS, reactor)
        self.assertOneLine(ttp, status, f"cannot listen on tcp:{port}")
        ttp.listening.addErrback(lambda _: None)

    async def test_bank_server_port_in_use_exits_1(self) -> None:
        base = Path(self.mktemp()).resolve()
        ttp_dir = base / "ttp"
        endpoint, fingerprint = start_ttp(self, ttp_dir)
        port = await self.taken_port()
        server = spawn_twistd(
            self, "tlsotp-server", "--data-dir", str(base / "bank"), "--name", SERVER_NAME,
            "--listen", f"tcp:{port}:interface=127.0.0.1", "--ttp", endpoint,
            "--ca-fingerprint", fingerprint, "--token", str(mint_token(ttp_dir, SERVER_NAME, Role.SERVER)),
            pattern=SERVER_LISTENING,
        )
        status = await server.ended.addTimeout(WAIT_SECONDS, reactor)
        self.assertOneLine(server, status, f"cannot listen on tcp:{port}")
        self.assertIn("tlsotp-server cannot start", server.log)
        server.listening.addErrback(lambda _: None)


class BadListenTests(unittest.SynchronousTestCase):
    def test_a_bad_bank_server_endpoint_is_refused_while_parsing_options(self) -> None:
        from tlsotp.commands.server_daemon import Options

        for endpoint in ("nonsense:1", "tcp:notaport"):
            with self.assertRaises(SystemExit) as caught:
                Options().parseOptions([
                    "--data-dir", self.mktemp(), "--name", SERVER_NAME, "--ca-fingerprint", "sha256:" + "00" * 32,
                    "--token", "x", "--listen", endpoint,
                ])
            message = str(caught.exception.code)
            self.assertTrue(message.startswith(f"tlsotp-server: bad --listen endpoint {endpoint!r}: "), message)
            self.assertNotIn("\n", message)
