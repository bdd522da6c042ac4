"""The server and client shells: real loopback TCP, and StringTransport for framing and timeouts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial import unittest

from tests.credentials import Identity, test_ca
from tlsotp.alerts import Alert, AlertError
from tlsotp.handshake import DEFAULT_SUITES, suite_named, suites_for_key
from tlsotp.otp import messages
from tlsotp.pki.keys import KeyType
from tlsotp.pki.roles import Role
from tlsotp.pki.verify import PeerVerifier
from tlsotp.services.bank_server import OTPServerFactory, ServerIdentity
from tlsotp.services.otp_authority import OTPAuthority, OTPPolicy
from tlsotp.services.otp_client import ClientSettings, SessionResult, confirm_otp, request_otp, request_otp_message

TX = "Rs 1,00,000 to your friend's account"


def alert_frame(alert: Alert) -> bytes:
    body = bytes([21, alert])
    return b"%d:%s," % (len(body), body)


class LoopbackCase(unittest.TestCase):
    """A real server factory listening on loopback, and clients dialling it."""

    def setUp(self) -> None:
        self.ca = test_ca()
        self.server = self.ca.issue("bank.example", Role.SERVER)
        self.client = self.ca.issue("alice.example", Role.CLIENT)
        data_dir = Path(self.mktemp())
        data_dir.mkdir()
        self.authority = OTPAuthority(reactor, data_dir, OTPPolicy())  # type: ignore[arg-type]  # the global reactor provides IReactorFromThreads
        self.addCleanup(self.authority.close)

    def listen(self, identity: Identity | None = None, **kwargs: Any) -> Deferred[str]:
        identity = identity or self.server
        suites = kwargs.pop("suites", suites_for_key(identity.certificate.public_key(), DEFAULT_SUITES))
        self.factory = OTPServerFactory(
            ServerIdentity(identity.key, identity.chain, identity.root), self.authority, suites=suites, **kwargs
        )

        def listening(port: Any) -> str:
            self.port = port
            self.addCleanup(port.stopListening)
            return f"tcp:host=127.0.0.1:port={port.getHost().port}"

        return serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(self.factory).addCallback(listening)

    def settings(self, identity: Identity | None = None, **kwargs: Any) -> ClientSettings:
        identity = identity or self.client
        kwargs.setdefault("server_name", "bank.example")
        kwargs.setdefault("crl", self.ca.crl())
        return ClientSettings(key=identity.key, chain=identity.chain, root=identity.root, **kwargs)

    async def refused(self, d: Deferred[SessionResult]) -> AlertError:
        try:
            await d
        except AlertError as exc:
            return exc
        self.fail("the session was expected to be refused")


class SessionTests(LoopbackCase):
    async def test_request_then_confirm(self) -> None:
        server = await self.listen()
        result = await request_otp(reactor, server, self.settings(), TX)
        grant = result.answer
        assert isinstance(grant, messages.OTPGrant)
        self.assertEqual(len(grant.code), 6)
        self.assertEqual(grant.message, f"The OTP for transferring {TX} is {grant.code}.")
        self.assertEqual(result.suite, DEFAULT_SUITES[0])
        self.assertEqual(result.stats.flights_received, 2)

        confirmed = await confirm_otp(reactor, server, self.settings(), TX, grant.code)
        self.assertEqual(confirmed.answer, messages.ConfirmResult(messages.ConfirmStatus.accepted, 0))
        again = await confirm_otp(reactor, server, self.settings(), TX, grant.code)
        assert isinstance(again.answer, messages.ConfirmResult)
        self.assertEqual(again.answer.status, messages.ConfirmStatus.already_used)

    async def test_embedding_api_fires_with_the_sentence(self) -> None:
        server = await self.listen()
        sentence = await request_otp_message(reactor, server, self.settings(), "Rs 500 to Bob")
        self.assertRegex(sentence, r"^The OTP for transferring Rs 500 to Bob is \d{6}\.$")

    async def test_confirm_is_bound_to_the_client(self) -> None:
        server = await self.listen()
        grant = (await request_otp(reactor, server, self.settings(), TX)).answer
        assert isinstance(grant, messages.OTPGrant)
        mallory = self.ca.issue("mallory.example", Role.CLIENT)
        stolen = await confirm_otp(reactor, server, self.settings(mallory), TX, grant.code)
        assert isinstance(stolen.answer, messages.ConfirmResult)
        self.assertEqual(stolen.answer.status, messages.ConfirmStatus.unknown_transaction)

    async def test_one_settings_object_validates_a_server_chain_once(self) -> None:
        """The settings' configuration is built once: the second session to the same server reuses
        the validated chain; a renewed server certificate (other DER) is validated afresh."""
        settings = self.settings()
        server = await self.listen()
        for i in range(3):
            await request_otp(reactor, server, settings, f"Rs {i} to Bob")
        config = settings.client_config()
        self.assertIs(config, settings.client_config())
        verifier = config.validate_peer
        assert isinstance(verifier, PeerVerifier)
        self.assertEqual(verifier.path_validations, 1)
        renewed = await self.listen(self.ca.issue("bank.example", Role.SERVER))
        await request_otp(reactor, renewed, settings, TX)
        self.assertEqual(verifier.path_validations, 2)
        # Settings with a CRL that revokes the server are another object: refused at once.
        revoked = self.settings(crl=self.ca.crl(self.server.certificate))
        error = await self.refused(request_otp(reactor, server, revoked, TX))
        self.assertEqual(error.alert, Alert.certificate_revoked)

    async def test_rsa_server_and_client(self) -> None:
        rsa_server = self.ca.issue("bank.example", Role.SERVER, KeyType.RSA_2048)
        rsa_client = self.ca.issue("bob.example", Role.CLIENT, KeyType.RSA_2048)
        server = await self.listen(rsa_server)
        result = await request_otp(reactor, server, self.settings(rsa_client), TX)
        self.assertIn("RSA", result.suite.name)

    async def test_many_clients_at_once(self) -> None:
        server = await self.listen()
        sessions = [request_otp(reactor, server, self.settings(), f"Rs {i} to Bob") for i in range(12)]
        results = await DeferredList(sessions, fireOnOneErrback=True, consumeErrors=True)
        codes = {result.answer.transaction: result.answer for ok, result in results}  # type: ignore[union-attr]
        self.assertEqual(set(codes), {f"Rs {i} to Bob" for i in range(12)})
        self.assertEqual(self.factory.sessions_completed, 12)
        self.assertEqual(self.factory.open_connections, 0)


class RefusalTests(LoopbackCase):
    async def _expect(self, alert: Alert, settings: ClientSettings, **server: Any) -> AlertError:
        address = await self.listen(**server)
        error = await self.refused(request_otp(reactor, address, settings, TX))
        self.assertEqual(error.alert, alert, str(error))
        return error

    async def test_wrong_server_name(self) -> None:
        await self._expect(Alert.bad_certificate, self.settings(server_name="other.example"))

    async def test_revoked_server(self) -> None:
        crl = self.ca.crl(self.server.certificate)
        await self._expect(Alert.certificate_revoked, self.settings(crl=crl))

    async def test_revoked_client_is_refused_by_the_server(self) -> None:
        crl = self.ca.crl(self.client.certificate)
        await self._expect(Alert.certificate_revoked, self.settings(), crl=crl)

    async def test_client_outside_the_allowed_names(self) -> None:
        await self._expect(Alert.bad_certificate, self.settings(), allowed_clients=["bob.example"])

    async def test_client_from_another_ca(self) -> None:
        stranger = test_ca("stranger").issue("alice.example", Role.CLIENT)
        await self._expect(Alert.unknown_ca, self.settings(stranger))

    async def test_no_common_suite(self) -> None:
        offered = [suite_named("TLSOTP_ECDHE_P384_ECDSA_WITH_AES_256_GCM_SHA384")]
        served = [s for s in suites_for_key(self.server.certificate.public_key()) if s not in offered]
        await self._expect(Alert.insufficient_security, self.settings(suites=offered), suites=served)

    async def test_nobody_listening(self) -> None:
        address = await self.listen()
        await self.port.stopListening()
        error = await self.refused(request_otp(reactor, address, self.settings(), TX))
        self.assertIn("cannot connect", error.detail)

    def test_connect_that_never_completes_times_out(self) -> None:
        clock_reactor = MemoryReactorClock()
        d = request_otp(clock_reactor, "tcp:host=127.0.0.1:port=7001", self.settings(timeout_seconds=5), TX)
        self.assertEqual(len(clock_reactor.tcpClients), 1)
        clock_reactor.advance(4.9)
        self.assertNoResult(d)
        clock_reactor.advance(0.2)
        error = self.failureResultOf(d, AlertError).value
        self.assertEqual(error.alert, Alert.handshake_failure)
        self.assertIn("cannot connect to tcp:host=127.0.0.1:port=7001", error.detail)


class FramingTests(unittest.TestCase):
    """What the shell does with bytes the sans-I/O core never sees."""

    def setUp(self) -> None:
        ca = test_ca()
        server = ca.issue("bank.example", Role.SERVER)
        data_dir = Path(self.mktemp())
        data_dir.mkdir()
        authority = OTPAuthority(reactor, data_dir, OTPPolicy())  # type: ignore[arg-type]  # the global reactor provides IReactorFromThreads
        self.addCleanup(authority.close)
        self.factory = OTPServerFactory(ServerIdentity(server.key, server.chain, server.root), authority, timeout_seconds=5)
        self.clock = task.Clock()
        self.protocol = self.factory.buildProtocol(None)
        assert self.protocol is not None
        self.protocol.callLater = self.clock.callLater  # type: ignore[assignment, method-assign]
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def test_malformed_netstring_gets_decode_error(self) -> None:
        self.protocol.dataReceived(b"abc:")
        self.assertEqual(self.transport.value(), alert_frame(Alert.decode_error))
        self.assertTrue(self.transport.disconnecting)

    def test_oversized_frame_refused_before_buffering(self) -> None:
        self.protocol.dataReceived(b"99999999:")
        self.assertEqual(self.transport.value(), alert_frame(Alert.record_overflow))
        self.assertTrue(self.transport.disconnecting)
        self.protocol.dataReceived(b"x" * 1000)
        self.assertEqual(self.transport.value(), alert_frame(Alert.record_overflow))

    def test_garbage_frame_in_one_byte_chunks(self) -> None:
        for byte in b"3:\x16\x01\x00,":
            self.protocol.dataReceived(bytes([byte]))
        self.assertEqual(self.transport.value(), alert_frame(Alert.decode_error))
        self.assertTrue(self.transport.disconnecting)

    def test_silent_peer_times_out(self) -> None:
        self.clock.advance(4.9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.2)
        self.assertEqual(self.transport.value(), alert_frame(Alert.handshake_failure))
        self.assertTrue(self.transport.disconnecting)

    def test_frames_after_failure_are_ignored(self) -> None:
        self.protocol.dataReceived(b"abc:")
        written = self.transport.value()
        self.protocol.stringReceived(b"\x16anything")
        self.assertEqual(self.transport.value(), written)
