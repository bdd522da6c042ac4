"""Cancelling a client session's Deferred ends the session: the request never goes out.

Real loopback TCP, the real ``OTPServerFactory`` and ``OTPAuthority`` over a SQLite file; the
store is read afterwards to show that the server issued nothing.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest
from zope.interface import implementer

from tests.client_loopback import TX, LoopbackServerCase
from tests.credentials import test_ca
from tlsotp.otp import messages
from tlsotp.pki.roles import Role
from tlsotp.services.otp_client import ClientSettings, SessionResult, request_otp


@implementer(IStreamClientEndpoint)
class CancelOnConnect:
    """A real TCP endpoint that cancels the session the moment its connection is made (the
    ClientHello has just been written; the server's answer to it has not arrived)."""

    def __init__(self, port: int) -> None:
        self.inner = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        self.session: Deferred[SessionResult] | None = None
        self.cancelled_at_handshake_complete: bool | None = None

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        def cancel_now(protocol: Any) -> Any:
            assert self.session is not None
            self.cancelled_at_handshake_complete = protocol.connection.handshake_complete
            self.session.cancel()
            return protocol

        connecting: Deferred[Any] = self.inner.connect(factory)
        return connecting.addCallback(cancel_now)


@implementer(IStreamClientEndpoint)
class CancelOnHandshakeComplete(CancelOnConnect):
    """Cancels once the client's handshake completed, i.e. right after its request went out."""

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        def hook(protocol: Any) -> Any:
            complete = protocol.handshake_complete

            def then_cancel(event: Any) -> None:
                complete(event)
                assert self.session is not None
                self.session.cancel()

            protocol.handshake_complete = then_cancel
            self.protocol = protocol
            return protocol

        connecting: Deferred[Any] = self.inner.connect(factory)
        return connecting.addCallback(hook)


class CancelTests(LoopbackServerCase):
    async def test_cancel_right_after_connect_issues_nothing(self) -> None:
        port = await self.listen()
        endpoint = CancelOnConnect(port)
        session = request_otp(reactor, endpoint, self.settings(), TX)
        endpoint.session = session
        with self.assertRaises(CancelledError):
            await session
        self.assertIs(endpoint.cancelled_at_handshake_complete, False)
        # The server saw the connection and is done with it; nothing was asked, nothing stored.
        await self.all_closed(sessions=1)
        self.assertEqual(self.stored_otps(), 0)
        self.assertEqual(self.factory.sessions_completed, 0)

    async def test_cancel_once_the_server_has_the_client_hello_issues_nothing(self) -> None:
        port = await self.listen()
        session = request_otp(reactor, f"tcp:host=127.0.0.1:port={port}", self.settings(), TX)
        # Cancelled before the server even answered: the handshake cannot have completed.
        self.on_client_hello = session.cancel
        with self.assertRaises(CancelledError):
            await session
        await self.all_closed(sessions=1)
        self.assertEqual(self.stored_otps(), 0)
        self.assertEqual(self.factory.sessions_completed, 0)

    async def test_cancel_after_the_request_went_out_closes_the_connection(self) -> None:
        # Documented: the server may have issued the OTP by then; the client stops waiting and
        # closes, and nothing is left open on either side.
        port = await self.listen()
        endpoint = CancelOnHandshakeComplete(port)
        session = request_otp(reactor, endpoint, self.settings(), TX)
        endpoint.session = session
        with self.assertRaises(CancelledError):
            await session
        await self.all_closed(sessions=1)
        self.assertTrue(endpoint.protocol.finished)

    async def test_a_session_not_cancelled_stores_its_otp(self) -> None:
        # The check above can see an OTP: without the cancel, the same session stores one.
        port = await self.listen()
        result = await request_otp(reactor, f"tcp:host=127.0.0.1:port={port}", self.settings(), TX)
        self.assertIsInstance(result.answer, messages.OTPGrant)
        await self.all_closed(sessions=1)
        self.assertEqual(self.stored_otps(), 1)

    async def test_cancel_while_connecting_then_connections_still_work(self) -> None:
        port = await self.listen()
        session = request_otp(reactor, f"tcp:host=127.0.0.1:port={port}", self.settings(), TX)
        session.cancel()
        with self.assertRaises(CancelledError):
            await session
        # Whether or not the kernel completed that connect, the server stores nothing for it.
        await self.all_closed(sessions=0)
        self.assertEqual(self.stored_otps(), 0)


class CancelWhileConnectingTests(unittest.SynchronousTestCase):
    def test_cancel_stops_the_connect_attempt_and_its_timeout(self) -> None:
        me = test_ca().issue("alice.example", Role.CLIENT)
        settings = ClientSettings(me.key, me.chain, me.root, "bank.example", None, timeout_seconds=5)
        clock_reactor = MemoryReactorClock()
        session = request_otp(clock_reactor, "tcp:host=127.0.0.1:port=7001", settings, TX)
        (connector,) = clock_reactor.connectors
        self.assertNoResult(session)
        session.cancel()
        self.failureResultOf(session, CancelledError)
        self.assertTrue(connector.stoppedConnecting)  # type: ignore[attr-defined]
        self.assertEqual(clock_reactor.getDelayedCalls(), [])
