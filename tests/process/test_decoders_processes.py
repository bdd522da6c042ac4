"""No traceback from real processes: ``tlsotp`` commands, the TTP daemon and the bank server.

The daemons are the end-to-end suite's shared cluster (``tests.process.test_end_to_end.Cluster``); the
peers that send damaged input run in this process on real loopback TCP: a tiny bank server that
sends a version-corrupted certificate to ``tlsotp client``, a client that sends one to the bank
server daemon, and an enrollment whose CSR has a corrupted version field.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any, cast

from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.utils import getProcessOutputAndValue
from twisted.protocols.basic import NetstringReceiver
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.cli_faults import MODES
from tests.der_mutations import with_version
from tests.process.test_end_to_end import COMMAND_SECONDS, Cluster
from tests.processes import REPO, TLSOTP, subprocess_env
from tests.vectors.harness import handshake_frame, handshake_type, parse_handshake_frame
from tlsotp.alerts import Alert
from tlsotp.handshake import (
    DEFAULT_SUITES,
    MAX_FRAME,
    AlertReceived,
    ClientConfig,
    ClientConnection,
    ConnectionFailed,
    Event,
    ServerConfig,
    ServerConnection,
    suites_for_key,
)
from tlsotp.handshake.messages import Certificate
from tlsotp.pki.csr import build_csr
from tlsotp.pki.roles import Role
from tlsotp.pki.verify import PeerVerifier
from tlsotp.services.enrollment import load_credentials
from tlsotp.services.ttp_client import exchange
from tlsotp.ttp import tokens, wire

reactor: Any = _reactor
TRACEBACK_MARKERS = ("Traceback", "Unhandled Error", "Unhandled error")


def corrupt_certificate_frame(frame: bytes) -> bytes:
    """A Certificate handshake frame with its leaf's version field changed; others unchanged."""
    if handshake_type(frame) is None:
        return frame
    message = parse_handshake_frame(frame)
    if not isinstance(message, Certificate) or not message.chain:
        return frame
    return handshake_frame(Certificate((with_version(message.chain[0]), *message.chain[1:])))


class _Peer(NetstringReceiver):
    """A real sans-I/O machine on TCP whose Certificate frames are corrupted on the way out."""

    MAX_LENGTH = MAX_FRAME

    def __init__(self, connection: ClientConnection | ServerConnection) -> None:
        self.connection = connection
        self.events: list[Event] = []
        self.done: Deferred[list[Event]] = Deferred()

    def connectionMade(self) -> None:
        if isinstance(self.connection, ClientConnection):
            self.connection.initiate()
        self.flush()

    def flush(self) -> None:
        for frame in self.connection.frames_to_send():
            self.sendString(corrupt_certificate_frame(frame))  # type: ignore[no-untyped-call]

    def stringReceived(self, string: bytes) -> None:
        self.events.extend(self.connection.receive_frame(string))
        self.flush()
        if self.connection.closed:
            cast(Any, self.transport).loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.callback(self.events)


class NoTracebackCase(unittest.TestCase):
    def setUp(self) -> None:
        Cluster.start()

    def daemon_log(self, index: int, since: int) -> str:
        return Cluster.daemons[index].log()[since:]

    def assertNoTraceback(self, text: str) -> None:
        for marker in TRACEBACK_MARKERS:
            self.assertNotIn(marker, text)


class ClientCommandTests(NoTracebackCase):
    async def test_client_refuses_a_version_corrupted_server_certificate_in_one_line(self) -> None:
        """Before the fix: a 35-line traceback and 'closed by the peer without an alert'."""
        _, server_dir, server_name = Cluster.servers["ec"]
        credentials = load_credentials(server_dir)
        assert credentials is not None
        config = ServerConfig(
            certificate_chain=tuple(credentials.chain),
            private_key=credentials.key,
            validate_peer=PeerVerifier(credentials.root, Role.CLIENT),
            suites=suites_for_key(credentials.key.public_key(), DEFAULT_SUITES),
        )
        peers: list[_Peer] = []

        def build() -> _Peer:
            peers.append(_Peer(ServerConnection(config)))
            return peers[-1]

        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Factory.forProtocol(build))
        self.addCleanup(port.stopListening)
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            [
                "-m", "tlsotp.commands.main", "client", "--data-dir", str(Cluster.clients["ec"]), "--ttp", Cluster.ttp_endpoint,
                "--server", f"tcp:host=127.0.0.1:port={port.getHost().port}", "--server-name", server_name,
                "--transaction", "Rs 10 to Bob",
            ],
            env=subprocess_env(), path=str(REPO),
        )
        stderr = err.decode()
        self.assertEqual(code, 1, stderr)
        self.assertNoTraceback(stderr)
        (line,) = stderr.splitlines()
        self.assertTrue(line.startswith("tlsotp client: bad_certificate: certificate is not valid DER X.509"), line)
        self.assertIn("InvalidVersion", line)
        self.assertEqual(out, b"")
        # And the client told the server why, before exiting.
        (peer,) = peers
        events = await peer.done
        self.assertIn(AlertReceived(Alert.bad_certificate), events)


class DaemonTests(NoTracebackCase):
    async def test_ttp_daemon_answers_a_version_corrupted_csr_with_bad_csr(self) -> None:
        since = len(Cluster.daemons[0].log())
        token = tokens.Token.parse(Cluster.token("carol.example", "client"))
        credentials = load_credentials(Cluster.clients["ec"])
        assert credentials is not None
        csr = with_version(build_csr(credentials.key, "carol.example").public_bytes(serialization.Encoding.DER))
        nonce = b"\x01" * wire.NONCE_BYTES
        proof = tokens.enrollment_proof(token.mac_key(), token.token_id, Role.CLIENT, "carol.example", nonce, csr)
        request = wire.EnrollRequest(token.token_id, Role.CLIENT, "carol.example", nonce, csr, proof)
        reply = await exchange(reactor, Cluster.ttp_endpoint, request, COMMAND_SECONDS)
        assert isinstance(reply, wire.Refused), reply
        self.assertEqual(reply.code, wire.Refusal.bad_csr, reply.detail)
        log = await self.poll_log(0, since, "refused bad_csr")
        self.assertNoTraceback(log)

    async def test_server_daemon_answers_a_version_corrupted_client_certificate_with_an_alert(self) -> None:
        endpoint, _, server_name = Cluster.servers["ec"]
        index = 1  # the EC server daemon (after the TTP)
        since = len(Cluster.daemons[index].log())
        credentials = load_credentials(Cluster.clients["ec"])
        assert credentials is not None
        config = ClientConfig(
            certificate_chain=tuple(credentials.chain),
            private_key=credentials.key,
            validate_peer=PeerVerifier(credentials.root, Role.SERVER, expected_names=[server_name]),
        )
        peer = _Peer(ClientConnection(config))
        port = int(endpoint.rsplit("=", 1)[1])
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), peer)
        events = await peer.done
        self.assertIn(AlertReceived(Alert.bad_certificate), events, events)
        self.assertEqual([e for e in events if isinstance(e, ConnectionFailed)], [])
        log = await self.poll_log(index, since, "bad_certificate")
        self.assertNoTraceback(log)

    async def poll_log(self, index: int, since: int, wanted: str) -> str:
        """The daemon's log since ``since`` once it mentions ``wanted`` (bounded: 10 s)."""
        from twisted.internet.task import deferLater

        for _ in range(200):
            log = self.daemon_log(index, since)
            if wanted in log:
                return log
            await deferLater(reactor, 0.05, lambda: None)
        self.fail(f"{wanted!r} not logged within 10 s:\n{self.daemon_log(index, since)}")


class CommandBackstopTests(unittest.SynchronousTestCase):
    """The real ``tlsotp.commands.main.main`` running a subcommand with a bug in each place one can be."""

    def run_faulty(self, mode: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tests.cli_faults", "faulty", "--mode", mode],
            cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=COMMAND_SECONDS,
            stdin=subprocess.DEVNULL,
        )

    def test_every_kind_of_bug_is_one_line_and_exit_1(self) -> None:
        for mode in MODES:
            result = self.run_faulty(mode)
            self.assertEqual(result.returncode, 1, (mode, result.stderr))
            for marker in TRACEBACK_MARKERS:
                self.assertNotIn(marker, result.stderr, mode)
            (line,) = result.stderr.splitlines()
            self.assertRegex(line, r"^tlsotp( faulty)?: .*bug", mode)
            self.assertEqual(result.stdout, "", mode)

    def test_usage_errors_are_still_exit_2(self) -> None:
        result = subprocess.run(
            [*TLSOTP, "client", "--no-such-option"], cwd=REPO, env=subprocess_env(), capture_output=True,
            text=True, timeout=COMMAND_SECONDS, stdin=subprocess.DEVNULL,
        )
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
