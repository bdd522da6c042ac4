"""The client's typed errors: could not reach, refused by the server, refused the server, hung up.

Each over real loopback TCP against the real server (or a real listener that hangs up), through
the library API and through the ``tlsotp client`` command's one line.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest
from zope.interface import implementer

from tests.client_loopback import TX, LoopbackServerCase
from tests.credentials import test_ca
from tests.test_ttp_fixtures import make_ttp, mint_token, start_ttp
from tlsotp.alerts import Alert, AlertError, TLSOTPError
from tlsotp.client import (
    LocalRefusal,
    PeerRefused,
    PeerUnreachable,
    SessionResult,
    SessionTruncated,
    TTPUnavailable,
    enroll,
    fetch_crl,
    request_otp,
)
from tlsotp.commands.client import ClientCommandOptions, describe_session_error
from tlsotp.commands.main import parse
from tlsotp.otp import messages
from tlsotp.pki.credentials import Credentials, RootPin, write_credentials
from tlsotp.pki.roles import Role


@implementer(IStreamClientEndpoint)
class NoSuchHost:
    """An endpoint whose name lookup fails, as HostnameEndpoint's does for an unknown host."""

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        return fail(DNSLookupError("no.such.host.invalid"))


class HangUp(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


class ErrorTypeTests(LoopbackServerCase):
    async def expect(self, kind: type[AlertError], session: Deferred[SessionResult]) -> AlertError:
        try:
            await session
        except AlertError as exc:
            self.assertIs(type(exc), kind, str(exc))
            self.assertIsInstance(exc, TLSOTPError)
            return exc
        self.fail(f"expected {kind.__name__}")

    async def test_nobody_listening_is_unreachable(self) -> None:
        port = await self.listen()
        await self.port.stopListening()
        error = await self.expect(PeerUnreachable, request_otp(reactor, f"tcp:host=127.0.0.1:port={port}", self.settings(), TX))
        self.assertIn("cannot connect", error.detail)

    async def test_unknown_host_is_unreachable(self) -> None:
        error = await self.expect(PeerUnreachable, request_otp(reactor, NoSuchHost(), self.settings(), TX))
        self.assertIn("no.such.host.invalid", error.detail)

    async def test_a_bad_endpoint_string_is_unreachable(self) -> None:
        error = await self.expect(PeerUnreachable, request_otp(reactor, "nonsense:x", self.settings(), TX))
        self.assertIn("bad endpoint", error.detail)

    def test_a_connect_that_never_completes_is_unreachable(self) -> None:
        clock_reactor = MemoryReactorClock()
        d = request_otp(clock_reactor, "tcp:host=127.0.0.1:port=7001", self.settings(timeout_seconds=5), TX)
        clock_reactor.advance(5.1)
        self.assertIs(type(self.failureResultOf(d, AlertError).value), PeerUnreachable)

    async def test_the_server_refusing_us_is_peer_refused(self) -> None:
        await self.listen(crl=self.ca.crl(self.client.certificate))
        port = self.port.getHost().port
        error = await self.expect(PeerRefused, request_otp(reactor, f"tcp:host=127.0.0.1:port={port}", self.settings(), TX))
        self.assertEqual(error.alert, Alert.certificate_revoked)

    async def test_us_refusing_the_server_is_local_refusal(self) -> None:
        port = await self.listen()
        settings = self.settings(server_name="other.example")
        error = await self.expect(LocalRefusal, request_otp(reactor, f"tcp:host=127.0.0.1:port={port}", settings, TX))
        self.assertEqual(error.alert, Alert.bad_certificate)

    async def test_a_server_that_hangs_up_is_truncated(self) -> None:
        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Factory.forProtocol(HangUp))
        self.addCleanup(port.stopListening)
        endpoint = f"tcp:host=127.0.0.1:port={port.getHost().port}"
        error = await self.expect(SessionTruncated, request_otp(reactor, endpoint, self.settings(), TX))
        self.assertEqual(error.alert, Alert.handshake_failure)

    async def test_an_endpoint_object_is_accepted(self) -> None:
        port = await self.listen()
        result = await request_otp(reactor, TCP4ClientEndpoint(reactor, "127.0.0.1", port), self.settings(), TX)
        self.assertIsInstance(result.answer, messages.OTPGrant)

    def test_neither_string_nor_endpoint_is_a_type_error(self) -> None:
        with self.assertRaises(TypeError):
            request_otp(reactor, 7001, self.settings(), TX)  # type: ignore[arg-type]


class CommandMessageTests(LoopbackServerCase):
    """``tlsotp client``'s one line says which way it failed; the exit code stays 1."""

    async def run_client(self, port: int, *args: str) -> tuple[int, str, str]:
        data_dir = Path(self.mktemp())
        identity = self.client
        write_credentials(data_dir, Credentials(identity.key, list(identity.chain), identity.root), new_key=True)
        options = parse([
            "client", "--data-dir", str(data_dir), "--no-crl-check", "--server", f"tcp:host=127.0.0.1:port={port}",
            "--server-name", "bank.example", *args,
        ])
        self.assertIsInstance(options, ClientCommandOptions)
        out, err, warnings = io.StringIO(), io.StringIO(), io.StringIO()
        self.patch(sys, "stderr", warnings)  # the command's --no-crl-check warning goes there
        code = await options.run(reactor, out, err)
        self.assertIn("warning: --no-crl-check", warnings.getvalue())
        return code, out.getvalue(), err.getvalue()

    async def test_unreachable(self) -> None:
        port = await self.listen()
        await self.port.stopListening()
        code, out, err = await self.run_client(port)
        self.assertEqual((code, out), (1, ""))
        self.assertRegex(err, r"^tlsotp client: unreachable: cannot connect to tcp:host=127\.0\.0\.1:port=\d+: .*\n\Z")

    async def test_refused_by_the_server(self) -> None:
        port = await self.listen(allowed_clients=["bob.example"])
        code, out, err = await self.run_client(port)
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, "tlsotp client: bad_certificate: the server refused the session\n")

    async def test_refusing_the_server(self) -> None:
        port = await self.listen()
        code, out, err = await self.run_client(port, "--server-name", "other.example")
        self.assertEqual((code, out), (1, ""))
        self.assertTrue(err.startswith("tlsotp client: bad_certificate: "), err)
        self.assertTrue(err.endswith(" is not for other.example (refused by this client)\n"), err)
        self.assertEqual(len(err.splitlines()), 1)

    async def test_a_good_session_still_prints_the_otp(self) -> None:
        port = await self.listen()
        code, out, err = await self.run_client(port)
        self.assertEqual((code, err), (0, ""))
        self.assertRegex(out, rf"^The OTP for transferring {TX} is \d{{6}}\.\n")


class DescribeTests(unittest.SynchronousTestCase):
    def test_each_kind_has_its_own_words(self) -> None:
        self.assertEqual(describe_session_error(PeerUnreachable("cannot connect to x: refused")),
                         "unreachable: cannot connect to x: refused")
        self.assertEqual(describe_session_error(PeerRefused(Alert.access_denied, "the server refused the session")),
                         "access_denied: the server refused the session")
        self.assertEqual(describe_session_error(LocalRefusal(Alert.unknown_ca, "d")),
                         "unknown_ca: d (refused by this client)")
        self.assertEqual(describe_session_error(SessionTruncated(Alert.unexpected_message, "closed by the peer")),
                         "unexpected_message: closed by the peer")

    def test_they_remain_alert_errors(self) -> None:
        for error in (PeerUnreachable("x"), PeerRefused(Alert.bad_certificate), LocalRefusal(Alert.unknown_ca),
                      SessionTruncated(Alert.handshake_failure)):
            self.assertIsInstance(error, AlertError)
        self.assertEqual(PeerUnreachable("x").alert, Alert.handshake_failure)




class TTPEndpointObjectTests(unittest.TestCase):
    async def test_fetch_crl_and_enroll_take_an_endpoint_object(self) -> None:
        ttp_dir = Path(self.mktemp()).resolve() / "ttp"
        ca = make_ttp(ttp_dir)
        service, _ = start_ttp(self, ttp_dir)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", cast(Any, service.port).getHost().port)
        pin = RootPin.from_fingerprint(ca.fingerprint)
        crl = await fetch_crl(reactor, endpoint, pin=pin)
        self.assertEqual(len(crl), 0)
        token = str(mint_token(ttp_dir, "alice.example", Role.CLIENT))
        credentials = await enroll(
            reactor, endpoint, data_dir=ttp_dir.parent / "alice", pin=pin, token=token, name="alice.example",
            role=Role.CLIENT,
        )
        self.assertEqual(credentials.root, ca.root)

    async def test_an_unreachable_ttp_endpoint_object_is_ttp_unavailable(self) -> None:
        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Factory.forProtocol(HangUp))
        number = port.getHost().port
        await port.stopListening()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", number)
        with self.assertRaises(TTPUnavailable) as caught:
            await fetch_crl(reactor, endpoint, pin=RootPin.from_certificate(test_ca().root))
        self.assertIn("cannot connect to the TTP at TCP4ClientEndpoint", str(caught.exception))
