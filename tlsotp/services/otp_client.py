"""The client side: connect, handshake, send one request, verify the answer.

``request_otp`` and ``confirm_otp`` are the Python API for code that embeds the client: each
returns a Deferred that fires with the server's verified answer or fails with an
``AlertError`` (a refusal by either side, a timeout, a lost connection).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from cryptography import x509
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.python.failure import Failure

from tlsotp.alerts import Alert, AlertError
from tlsotp.handshake import DEFAULT_SUITES, ClientConfig, ClientConnection, HandshakeComplete, Suite, TraceRecord
from tlsotp.otp import messages
from tlsotp.pki.keys import PrivateKey
from tlsotp.pki.names import check_dns_name
from tlsotp.pki.roles import Role
from tlsotp.pki.verify import PeerVerifier
from tlsotp.services.channel import ChannelStats, SansIOConnection, SecureChannelProtocol

Request = messages.OTPRequest | messages.ConfirmRequest
Answer = messages.OTPGrant | messages.ConfirmResult


@dataclass(frozen=True)
class ClientSettings:
    """Everything the client needs to meet one server; built from options or by embedding code."""

    key: PrivateKey
    chain: Sequence[x509.Certificate]
    root: x509.Certificate
    server_name: str
    crl: x509.CertificateRevocationList | None
    suites: Sequence[Suite] = DEFAULT_SUITES
    timeout_seconds: float = 30.0
    observer: Callable[[TraceRecord], None] | None = None
    clock: Callable[[], float] = field(default=time.time)

    def __post_init__(self) -> None:
        # Checked (full match, no control characters) when the settings are made, not per connection.
        object.__setattr__(self, "server_name", check_dns_name(self.server_name))

    def client_config(self) -> ClientConfig:
        verifier = PeerVerifier(self.root, Role.SERVER, expected_names=[self.server_name], crl=self.crl)
        return ClientConfig(
            certificate_chain=tuple(self.chain),
            private_key=self.key,
            validate_peer=verifier,
            suites=tuple(self.suites),
            observer=self.observer,
        )


@dataclass(frozen=True)
class SessionResult:
    answer: Answer
    suite: Suite
    stats: ChannelStats


def check_grant(grant: messages.OTPGrant, request: messages.OTPRequest, now: float) -> None:
    """The client's own checks on what the server granted (the record layer vouches for its origin)."""
    if grant.transaction != request.transaction:
        raise AlertError(Alert.illegal_parameter, "the OTP is for another transaction than the one requested")
    if grant.message != messages.otp_message(grant.transaction, grant.code):
        raise AlertError(Alert.illegal_parameter, "the OTP message does not state the code and transaction")
    if grant.expires_at <= now:
        raise AlertError(Alert.illegal_parameter, "the OTP arrived already expired")


class OTPClientProtocol(SecureChannelProtocol):
    peer_role = "server"

    def __init__(self, settings: ClientSettings, request: Request) -> None:
        self.settings = settings
        self.request = request
        self.timeout_seconds = settings.timeout_seconds
        self.result: Deferred[SessionResult] = Deferred()
        self.answer: Answer | None = None
        self.suite: Suite | None = None
        super().__init__()

    def make_connection(self) -> SansIOConnection:
        return ClientConnection(self.settings.client_config())

    def start(self) -> None:
        assert isinstance(self.connection, ClientConnection)
        self.connection.initiate()

    def handshake_complete(self, event: HandshakeComplete) -> None:
        self.suite = event.suite
        # Sent in the same flight as the client's Finished: two round trips in all.
        self.connection.send_application_data(messages.encode(self.request))

    def application_data(self, data: bytes) -> None:
        if self.answer is not None:
            self.abort(Alert.unexpected_message, "the server sent more than one answer")
            return
        try:
            answer = messages.decode(data)
            if isinstance(self.request, messages.OTPRequest) and isinstance(answer, messages.OTPGrant):
                check_grant(answer, self.request, self.settings.clock())
            elif not (isinstance(self.request, messages.ConfirmRequest) and isinstance(answer, messages.ConfirmResult)):
                raise AlertError(Alert.unexpected_message, f"the server answered with {type(answer).__name__}")
        except AlertError as exc:
            self.abort(exc.alert, exc.detail)
            return
        self.answer = answer
        # The server closes after its answer; we wait for its close_notify, bounded by the timeout.

    def closed_cleanly(self) -> None:
        if self.answer is None or self.suite is None:
            self.failed(AlertError(Alert.close_notify, "the server closed without answering"), sent=False)
            return
        self.result.callback(SessionResult(self.answer, self.suite, self.stats))

    def failed(self, error: AlertError, *, sent: bool) -> None:
        if not self.result.called:
            self.result.errback(error)


def run_session(reactor: Any, server: str, settings: ClientSettings, request: Request) -> Deferred[SessionResult]:
    """Connect to the endpoint string ``server``, run one session, fire with its verified result."""
    protocol = OTPClientProtocol(settings, request)
    endpoint = clientFromString(reactor, server)  # type: ignore[no-untyped-call]
    connecting: Deferred[object] = connectProtocol(endpoint, protocol)  # type: ignore[no-untyped-call]
    # Bounds the connect; once connected, the protocol's own timeout bounds every wait.
    connecting.addTimeout(settings.timeout_seconds, reactor)

    def connected(_: object) -> Deferred[SessionResult]:
        return protocol.result

    def not_connected(failure: Failure) -> Failure:
        raise AlertError(Alert.handshake_failure, f"cannot connect to {server}: {failure.getErrorMessage()}")

    return connecting.addCallbacks(connected, not_connected)


def request_otp(reactor: Any, server: str, settings: ClientSettings, transaction: str) -> Deferred[SessionResult]:
    """Ask ``server`` for an OTP for ``transaction``; fires with a SessionResult whose answer is an OTPGrant."""
    return run_session(reactor, server, settings, messages.OTPRequest(messages.check_transaction(transaction)))


def request_otp_message(reactor: Any, server: str, settings: ClientSettings, transaction: str) -> Deferred[str]:
    """The simplest embedding: fires with the verified OTP sentence, or fails with ``AlertError``."""

    def sentence(result: SessionResult) -> str:
        assert isinstance(result.answer, messages.OTPGrant)
        return result.answer.message

    return request_otp(reactor, server, settings, transaction).addCallback(sentence)


def confirm_otp(
    reactor: Any, server: str, settings: ClientSettings, transaction: str, code: str
) -> Deferred[SessionResult]:
    """Confirm ``code`` for ``transaction``; fires with a SessionResult whose answer is a ConfirmResult."""
    request = messages.ConfirmRequest(messages.check_transaction(transaction), messages.check_code(code))
    return run_session(reactor, server, settings, request)
