"""The client's checks on the server's answer, each with the alert docs/protocol.rst gives it."""

from __future__ import annotations

from twisted.internet import reactor, task
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from tests.credentials import test_ca
from tests.unit.test_party import LoopbackCase
from tlsotp.alerts import Alert, AlertError
from tlsotp.codec import Writer
from tlsotp.handshake import DEFAULT_SUITES, HandshakeComplete
from tlsotp.otp import messages
from tlsotp.otp.messages import ConfirmStatus, MessageType
from tlsotp.pki.roles import Role
from tlsotp.services.otp_client import ClientSettings, OTPClientProtocol, SessionResult, confirm_otp, request_otp

TX = "Rs 5 to Bob"
NOW = 1_900_000_000
TX_ID = b"\x07" * 16


def grant(transaction: str = TX, code: str = "123456", expires_at: int = NOW + 300, message: str | None = None) -> bytes:
    return messages.encode(messages.OTPGrant(
        TX_ID, transaction, code, expires_at, messages.otp_message(transaction, code) if message is None else message
    ))


def raw_grant(code: str) -> bytes:
    """A grant with a code the encoder would refuse, as a hostile server could send it."""
    w = Writer().u8(MessageType.otp_grant).bytes8(TX_ID).text16(TX).text16(code).u64(NOW + 300)
    return w.text16(messages.otp_message(TX, code)).getvalue()


def raw_confirm(transaction: str, code: str) -> bytes:
    return Writer().u8(MessageType.confirm_request).text16(transaction).text16(code).getvalue()


class GrantCheckTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        ca = test_ca()
        me = ca.issue("alice.example", Role.CLIENT)
        self.settings = ClientSettings(
            key=me.key, chain=me.chain, root=me.root, server_name="bank.example", crl=ca.crl(), clock=lambda: NOW
        )

    def outcome(self, request: messages.OTPRequest | messages.ConfirmRequest, *answers: bytes) -> SessionResult | AlertError:
        protocol = OTPClientProtocol(self.settings, request)
        protocol.callLater = task.Clock().callLater  # type: ignore[assignment, method-assign]
        protocol.makeConnection(StringTransport())
        for answer in answers:
            protocol.application_data(answer)
        if not protocol.finished:  # the answer passed: end as the server's close_notify would
            protocol.suite = DEFAULT_SUITES[0]
            protocol.finish(None, sent=False)
        protocol.connectionLost()
        results: list[SessionResult | AlertError] = []
        protocol.result.addCallbacks(results.append, lambda f: results.append(f.value))
        return results[0]

    def refused(self, request: messages.OTPRequest | messages.ConfirmRequest, *answers: bytes) -> Alert:
        result = self.outcome(request, *answers)
        assert isinstance(result, AlertError), result
        return result.alert

    def test_a_good_grant_is_accepted(self) -> None:
        result = self.outcome(messages.OTPRequest(TX), grant())
        assert isinstance(result, SessionResult)
        self.assertEqual(result.answer, messages.decode(grant()))

    def test_each_failed_grant_check_has_its_alert(self) -> None:
        request = messages.OTPRequest(TX)
        self.assertEqual(self.refused(request, grant(transaction="Rs 9 to Eve")), Alert.illegal_parameter)
        self.assertEqual(self.refused(request, grant(message="The OTP is 123456.")), Alert.illegal_parameter)
        self.assertEqual(self.refused(request, grant(expires_at=NOW)), Alert.illegal_parameter)
        self.assertEqual(self.refused(request, grant(expires_at=NOW - 1)), Alert.illegal_parameter)
        self.assertEqual(self.refused(request, raw_grant("123")), Alert.decode_error)
        self.assertEqual(self.refused(request, raw_grant("12345x")), Alert.decode_error)
        self.assertEqual(self.refused(request, b""), Alert.decode_error)
        self.assertEqual(self.refused(request, grant()[:-1]), Alert.decode_error)
        self.assertEqual(self.refused(request, b"\x09"), Alert.unexpected_message)

    def test_wrong_answer_type_and_direction(self) -> None:
        result = messages.encode(messages.ConfirmResult(ConfirmStatus.accepted, 0))
        self.assertEqual(self.refused(messages.OTPRequest(TX), result), Alert.unexpected_message)
        self.assertEqual(self.refused(messages.ConfirmRequest(TX, "123456"), grant()), Alert.unexpected_message)
        # a client-to-server message coming from the server
        request = messages.encode(messages.OTPRequest(TX))
        self.assertEqual(self.refused(messages.OTPRequest(TX), request), Alert.unexpected_message)

    def test_a_second_answer_is_refused(self) -> None:
        self.assertEqual(self.refused(messages.OTPRequest(TX), grant(), grant()), Alert.unexpected_message)


class LockoutOverTheWireTests(LoopbackCase):
    """README's --max-attempts: the transaction locks, and a fresh request does not unlock it."""

    async def test_a_locked_transaction_gets_no_new_code(self) -> None:
        server = await self.listen()
        settings = self.settings()
        first = (await request_otp(reactor, server, settings, TX)).answer
        assert isinstance(first, messages.OTPGrant)
        wrong = str((int(first.code) + 1) % 10**6).zfill(6)
        answers = []
        for _ in range(2):
            answers.append((await confirm_otp(reactor, server, settings, TX, wrong)).answer)
            second = (await request_otp(reactor, server, settings, TX)).answer  # a fresh code...
            assert isinstance(second, messages.OTPGrant)
            wrong = str((int(second.code) + 1) % 10**6).zfill(6)
        answers.append((await confirm_otp(reactor, server, settings, TX, wrong)).answer)
        self.assertEqual(answers, [
            messages.ConfirmResult(ConfirmStatus.wrong_code, 2),  # ...does not reset the count
            messages.ConfirmResult(ConfirmStatus.wrong_code, 1),
            messages.ConfirmResult(ConfirmStatus.locked, 0),
        ])
        refusal = await self.refused(request_otp(reactor, server, settings, TX))
        self.assertEqual(refusal.alert, Alert.access_denied)
        locked = (await confirm_otp(reactor, server, settings, TX, second.code)).answer  # type: ignore[union-attr]
        self.assertEqual(locked, messages.ConfirmResult(ConfirmStatus.locked, 0))


class RawClient(OTPClientProtocol):
    """A client that sends the given records instead of its request, as another implementation might."""

    def __init__(self, settings: ClientSettings, records: list[bytes]) -> None:
        super().__init__(settings, messages.OTPRequest(TX))
        self.records = records

    def handshake_complete(self, event: HandshakeComplete) -> None:
        self.suite = event.suite
        for record in self.records:
            self.connection.send_application_data(record)


class ServerRefusalTests(LoopbackCase):
    """The server's alert for each malformed or misdirected application record, over real TCP."""

    async def refusal_for(self, *records: bytes) -> Alert:
        server = await self.listen()
        protocol = RawClient(self.settings(), list(records))
        endpoint = clientFromString(reactor, server)
        await connectProtocol(endpoint, protocol)
        return (await self.refused(protocol.result)).alert

    async def test_malformed_requests(self) -> None:
        good = messages.encode(messages.OTPRequest(TX))
        self.assertEqual(await self.refusal_for(good[:4], good[4:]), Alert.decode_error)  # split over two records
        self.assertEqual(await self.refusal_for(good + good), Alert.decode_error)  # two in one record
        self.assertEqual(await self.refusal_for(raw_confirm(TX, "123")), Alert.decode_error)  # 3-digit code
        self.assertEqual(await self.refusal_for(raw_confirm("e\u0301", "123456")), Alert.decode_error)  # not NFC

    async def test_unknown_type_and_wrong_direction(self) -> None:
        self.assertEqual(await self.refusal_for(b"\x2a" + b"\x00" * 4), Alert.unexpected_message)
        self.assertEqual(await self.refusal_for(grant()), Alert.unexpected_message)
        result = messages.encode(messages.ConfirmResult(ConfirmStatus.locked, 0))
        self.assertEqual(await self.refusal_for(result), Alert.unexpected_message)

    async def test_a_second_request_in_the_session(self) -> None:
        good = messages.encode(messages.OTPRequest(TX))
        self.assertEqual(await self.refusal_for(good, good), Alert.unexpected_message)
