"""Floods of idle TCP connections against the real daemons; real clients are still served.

Before connection slots, 256 idle connections (no credentials needed) locked every client out
of the bank server for up to 30 s, and the TTP had no limit at all. Here a TTP and a bank
server run as ``twistd`` subprocesses with a first-message deadline far longer than the test,
so that only eviction of the oldest silent connection can make room for the real client.
"""

from __future__ import annotations

import atexit
import re
import resource
import selectors
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import ClassVar

from twisted.trial import unittest

from tests.credentials import test_ca
from tests.process.test_end_to_end import OTP_LINE, tlsotp
from tests.processes import Daemon
from tlsotp.handshake import ClientConfig, ClientConnection
from tlsotp.pki.roles import Role
from tlsotp.services.connection_slots import DEFAULT_MAX_PER_ADDRESS

#: Longer than any test here: a silent connection is closed only to make room, never by the clock.
FIRST_MESSAGE_TIMEOUT = "300"
FLOOD_WAIT_SECONDS = 30.0
#: The flood's sockets, the daemons' and some spare.
FILES_NEEDED = 2500
#: The alert an evicted connection gets before the server closes it: handshake_failure.
EVICTION_ALERT = b"2:\x15(,"


def client_hello() -> bytes:
    """A real ClientHello frame, as a netstring (it carries no certificate: any client key will do)."""
    identity = test_ca("flood").issue("stalling.example", Role.CLIENT)
    connection = ClientConnection(ClientConfig(identity.chain, identity.key, validate_peer=lambda chain: None))
    connection.initiate()
    (frame,) = connection.frames_to_send()
    return b"%d:%s," % (len(frame), frame)


def raise_file_limit() -> None:
    """Make room for the flood's sockets; the daemons started afterwards inherit the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < FILES_NEEDED:
        if hard != resource.RLIM_INFINITY and hard < FILES_NEEDED:
            raise unittest.SkipTest(f"the hard limit on open files is {hard}; these tests need {FILES_NEEDED}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (FILES_NEEDED, hard))


class Flood:
    """Idle connections from one source address: connected, then never a byte sent."""

    def __init__(self, count: int, source: str, port: int) -> None:
        self.sockets: list[socket.socket] = []
        try:
            for _ in range(count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                self.sockets.append(s)
                s.bind((source, 0))
                s.settimeout(10)
                s.connect(("127.0.0.1", port))
        except BaseException:
            self.close()
            raise

    def wait_until_closed(self, expected: int) -> tuple[int, dict[bytes, int]]:
        """Read every socket until ``expected`` of them were closed by the daemon (or time runs out).

        Returns how many were closed, and how often each thing they received was sent.
        """
        received: dict[socket.socket, bytes] = {}
        closed = 0
        with selectors.DefaultSelector() as selector:
            for s in self.sockets:
                s.setblocking(False)
                selector.register(s, selectors.EVENT_READ)
            deadline = time.monotonic() + FLOOD_WAIT_SECONDS
            while closed < expected and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=0.5):
                    ready = key.fileobj
                    assert isinstance(ready, socket.socket)
                    s = ready
                    try:
                        data = s.recv(4096)
                    except ConnectionError:
                        data = b""
                    if data:
                        received[s] = received.get(s, b"") + data
                    else:
                        selector.unregister(s)
                        closed += 1
        seen: dict[bytes, int] = {}
        for data in received.values():
            seen[data] = seen.get(data, 0) + 1
        return closed, seen

    def close(self) -> None:
        for s in self.sockets:
            s.close()


class FloodCluster:
    """A TTP and an EC bank server, each on a free port with a deep listen backlog."""

    started: ClassVar[bool] = False
    failure: ClassVar[str | None] = None
    workdir: ClassVar[Path]
    ttp_dir: ClassVar[Path]
    fingerprint: ClassVar[str]
    ttp: ClassVar[Daemon]
    server: ClassVar[Daemon]
    client_dir: ClassVar[Path]

    @classmethod
    def start(cls) -> None:
        if cls.started:
            return
        if cls.failure is not None:
            raise AssertionError(f"the flood cluster failed to start earlier: {cls.failure}")
        raise_file_limit()
        atexit.register(cls.stop)
        cls.workdir = Path(tempfile.mkdtemp(prefix="tlsotp-flood-"))
        try:
            cls._start_daemons()
        except BaseException as exc:
            cls.failure = str(exc)[:2000]
            cls.stop()
            raise
        cls.started = True

    @classmethod
    def _start_daemons(cls) -> None:
        cls.ttp_dir = cls.workdir / "ttp"
        match = re.search(r"sha256:[0-9a-f]{64}", tlsotp("ttp", "init", "--data-dir", str(cls.ttp_dir)).stdout)
        assert match
        cls.fingerprint = match.group(0)
        cls.ttp = Daemon(
            cls.workdir, "ttp", "tlsotp-ttp", "--data-dir", str(cls.ttp_dir),
            "--listen", "tcp:0:interface=127.0.0.1:backlog=1024",
            "--first-message-timeout", FIRST_MESSAGE_TIMEOUT,
        )
        cls.ttp.wait_ready()
        cls.server = Daemon(
            cls.workdir, "server", "tlsotp-server", "--data-dir", str(cls.workdir / "server"),
            "--name", "bank.example", "--listen", "tcp:0:interface=127.0.0.1:backlog=1024",
            "--ttp", cls.ttp_endpoint(), "--ca-fingerprint", cls.fingerprint,
            "--token", cls.token("bank.example", "server"), "--first-message-timeout", FIRST_MESSAGE_TIMEOUT,
        )
        cls.server.wait_ready()
        cls.client_dir = cls.enroll("alice.example")

    @classmethod
    def ttp_endpoint(cls) -> str:
        return f"tcp:host=127.0.0.1:port={cls.ttp.port}"

    @classmethod
    def token(cls, name: str, role: str) -> str:
        out = tlsotp("ttp", "token", "--data-dir", str(cls.ttp_dir), "--name", name, "--role", role).stdout
        return out.strip().splitlines()[-1].strip()

    @classmethod
    def enroll(cls, name: str) -> Path:
        data_dir = cls.workdir / name
        tlsotp(
            "enroll", "--data-dir", str(data_dir), "--ttp", cls.ttp_endpoint(), "--ca-fingerprint", cls.fingerprint,
            "--token", cls.token(name, "client"), "--name", name, "--role", "client",
        )
        return data_dir

    @classmethod
    def stop(cls) -> None:
        for daemon in (getattr(cls, "server", None), getattr(cls, "ttp", None)):
            if daemon is not None:
                daemon.stop()
        shutil.rmtree(cls.workdir, ignore_errors=True)


class FloodTests(unittest.TestCase):
    def setUp(self) -> None:
        FloodCluster.start()

    def flood(self, daemon: Daemon, count: int, source: str) -> Flood:
        """Open ``count`` idle connections and wait until the daemon has evicted all it must."""
        flood = Flood(count, source, daemon.port)
        self.addCleanup(flood.close)
        must_give_way = count - DEFAULT_MAX_PER_ADDRESS
        closed, seen = flood.wait_until_closed(must_give_way)
        self.assertEqual(closed, must_give_way, f"{closed} of {count} closed; {seen}\n{daemon.log()[-3000:]}")
        return flood

    def assertFewLoadLines(self, daemon: Daemon, before: int) -> None:
        # The first eviction is logged at once, the rest are counted once per interval: a few
        # lines in all (with the real session's own), where one per connection would be hundreds.
        lines = daemon.log()[before:].splitlines()
        self.assertLess(len(lines), 20, "\n".join(lines[:30]))
        self.assertNotIn("Traceback", daemon.log())

    def otp(self, transaction: str) -> None:
        result = tlsotp(
            "client", "--data-dir", str(FloodCluster.client_dir), "--ttp", FloodCluster.ttp_endpoint(),
            "--server", f"tcp:host=127.0.0.1:port={FloodCluster.server.port}", "--server-name", "bank.example",
            "--transaction", transaction, check=False,
        )
        self.assertEqual(result.returncode, 0, f"{result.stderr}\n{FloodCluster.server.log()[-3000:]}")
        match = OTP_LINE.search(result.stdout)
        assert match, result.stdout
        self.assertEqual(match.group("tx"), transaction)

    def test_server_flood_from_another_address(self) -> None:
        before = len(FloodCluster.server.log())
        self.flood(FloodCluster.server, 300, "127.0.0.2")
        self.otp("Rs 300 during a flood from 127.0.0.2")
        self.assertFewLoadLines(FloodCluster.server, before)

    def test_server_flood_from_the_clients_own_address(self) -> None:
        before = len(FloodCluster.server.log())
        self.flood(FloodCluster.server, 1000, "127.0.0.1")
        self.otp("Rs 1000 during a flood from 127.0.0.1")
        self.assertFewLoadLines(FloodCluster.server, before)

    def test_evicted_connections_are_told_why(self) -> None:
        flood = Flood(DEFAULT_MAX_PER_ADDRESS + 5, "127.0.0.3", FloodCluster.server.port)
        self.addCleanup(flood.close)
        closed, seen = flood.wait_until_closed(5)
        self.assertEqual((closed, seen), (5, {EVICTION_ALERT: 5}))

    def test_full_of_clients_that_spoke_refuses_with_an_alert(self) -> None:
        # A server with two slots, both held by connections that sent a ClientHello and then
        # stalled: the real client is refused with internal_error, in one line, exit 1.
        daemon = Daemon(
            FloodCluster.workdir, "small-server", "tlsotp-server",
            "--data-dir", str(FloodCluster.workdir / "small-server"), "--name", "small.example",
            "--listen", "tcp:0:interface=127.0.0.1", "--ttp", FloodCluster.ttp_endpoint(),
            "--ca-fingerprint", FloodCluster.fingerprint, "--token", FloodCluster.token("small.example", "server"),
            "--max-connections", "2",
        )
        self.addCleanup(daemon.stop)
        daemon.wait_ready()
        port = daemon.port
        stalled = []
        for source in ("127.0.0.5", "127.0.0.6"):
            s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
            self.addCleanup(s.close)
            s.sendall(client_hello())
            self.assertTrue(s.recv(1))  # the server answered: this connection has spoken
            stalled.append(s)
        result = tlsotp(
            "client", "--data-dir", str(FloodCluster.client_dir), "--ttp", FloodCluster.ttp_endpoint(),
            "--server", f"tcp:host=127.0.0.1:port={port}", "--server-name", "small.example", check=False,
        )
        self.assertEqual(result.returncode, 1, result.stdout)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        self.assertIn("internal_error: the server refused the session", result.stderr)
        self.assertNotIn("Traceback", daemon.log())

    def test_ttp_flood_from_another_address(self) -> None:
        before = len(FloodCluster.ttp.log())
        self.flood(FloodCluster.ttp, 300, "127.0.0.2")
        FloodCluster.enroll("bob.example")
        self.assertFewLoadLines(FloodCluster.ttp, before)

    def test_ttp_flood_from_the_enrolling_address(self) -> None:
        before = len(FloodCluster.ttp.log())
        self.flood(FloodCluster.ttp, 1000, "127.0.0.1")
        FloodCluster.enroll("carol.example")
        self.assertFewLoadLines(FloodCluster.ttp, before)
