"""The client side: connect, handshake, send one request, verify the answer.

``request_otp`` and ``confirm_otp`` are the Python API for code that embeds the client (its
public face is ``tlsotp.client``): each takes an endpoint string or an ``IStreamClientEndpoint``
and returns a Deferred that fires with the server's verified answer or fails with one of the
typed ``AlertError``s of ``tlsotp.alerts``: ``PeerUnreachable`` (no connection),
``PeerRefused`` (the server sent an alert), ``LocalRefusal`` (we refused the server, or it
timed out), ``SessionTruncated`` (it hung up without an alert).

Cancelling the Deferred ends the session at once and it fails with ``CancelledError``: while
connecting, the connection attempt is abandoned; once connected, the client sends
``user_canceled`` and closes. The request travels in the client's second flight (with its
Finished), so a session cancelled before the handshake completes never sends it, and the server
issues nothing. Once the request has gone out, cancelling only stops the wait for the answer.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from cryptography import x509
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from tlsotp.alerts import Alert, AlertError, LocalRefusal, PeerRefused, PeerUnreachable, SessionTruncated
from tlsotp.handshake import DEFAULT_SUITES, ClientConfig, ClientConnection, HandshakeComplete, Suite, TraceRecord
from tlsotp.otp import messages
from tlsotp.pki.keys import PrivateKey
from tlsotp.pki.names import check_dns_name
from tlsotp.pki.roles import Role
from tlsotp.pki.verify import PeerVerifier
from tlsotp.services.channel import ChannelStats, SansIOConnection, SecureChannelProtocol

Request = messages.OTPRequest | messages.ConfirmRequest
Answer = messages.OTPGrant | messages.ConfirmResult

#: Where the server is: a Twisted client endpoint string (``tcp:host=...:port=...``) or an
#: endpoint object (``TCP4ClientEndpoint``, ``HostnameEndpoint``, a UNIX endpoint, ...).
ServerEndpoint = str | IStreamClientEndpoint

#: The reactor: its clock bounds the connect. An endpoint string also needs the interface its
#: kind of endpoint uses (``IReactorTCP`` for ``tcp:``), as ``clientFromString`` does.
Reactor = IReactorTime


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
        """The handshake configuration, built once per settings object and shared by its sessions.

        The settings are frozen, so one configuration fits them all: its ``PeerVerifier`` checks
        the CRL's signature once and validates a server chain once (the validity times and the
        CRL's freshness and entries are still checked every session), the key and certificate
        are matched once, and the chain is DER-encoded once. Settings with another root, CRL or
        server name are another object, with a configuration of their own."""
        return self._config

    @functools.cached_property
    def _config(self) -> ClientConfig:
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
        self.truncated = False
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

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Not finished yet: the peer closed TCP without an alert (the shell reports a truncation).
        self.truncated = not self.finished
        super().connectionLost(reason)

    def failed(self, error: AlertError, *, sent: bool) -> None:
        if self.result.called:
            return
        # Who ended the session decides the type: the caller can tell a refusal by the server
        # from its own side's refusal and from a connection that merely went away.
        kind: type[AlertError] = LocalRefusal if sent else SessionTruncated if self.truncated else PeerRefused
        self.result.errback(kind(error.alert, error.detail))

    def cancel(self) -> None:
        """The caller gave up: tell the server (user_canceled) and close."""
        if not self.finished:
            self.abort(Alert.user_canceled, "cancelled by the caller")


def describe_endpoint(server: ServerEndpoint) -> str:
    return server if isinstance(server, str) else type(server).__name__


def client_endpoint(reactor: Reactor, server: ServerEndpoint) -> IStreamClientEndpoint:
    """``server`` itself if it is an endpoint, else the endpoint its string describes."""
    if isinstance(server, str):
        try:
            endpoint: IStreamClientEndpoint = clientFromString(reactor, server)  # type: ignore[no-untyped-call]
        except (ValueError, TypeError, KeyError) as exc:
            raise PeerUnreachable(f"bad endpoint {server!r}: {exc}") from None
        return endpoint
    if not IStreamClientEndpoint.providedBy(server):
        raise TypeError(f"the server must be an endpoint string or an IStreamClientEndpoint, not {type(server).__name__}")
    return server


def run_session(
    reactor: Reactor, server: ServerEndpoint, settings: ClientSettings, request: Request
) -> Deferred[SessionResult]:
    """Connect to ``server``, run one session, fire with its verified result (see the module doc)."""
    try:
        endpoint = client_endpoint(reactor, server)
    except PeerUnreachable as exc:
        return fail(exc)
    protocol = OTPClientProtocol(settings, request)
    connecting: Deferred[object] = connectProtocol(endpoint, protocol)  # type: ignore[no-untyped-call]
    # Bounds the connect; once connected, the protocol's own timeout bounds every wait.
    connecting.addTimeout(settings.timeout_seconds, reactor)

    cancelled = False

    def cancel(_: Deferred[SessionResult]) -> None:
        # Deferred.cancel then fails ``result`` with CancelledError, unless the abandoned
        # attempt reports first (synchronously): ``not_connected`` makes that CancelledError too.
        nonlocal cancelled
        cancelled = True
        if protocol.transport is None:
            connecting.cancel()
        else:
            protocol.cancel()

    result: Deferred[SessionResult] = Deferred(cancel)

    def connected(_: object) -> Deferred[SessionResult]:
        return protocol.result

    def not_connected(failure: Failure) -> SessionResult:
        if cancelled:
            raise CancelledError(f"cancelled while connecting to {describe_endpoint(server)}")
        raise PeerUnreachable(f"cannot connect to {describe_endpoint(server)}: {failure.getErrorMessage()}")

    def deliver(outcome: SessionResult | Failure) -> None:
        # After a cancel, ``result`` has fired (CancelledError): the late outcome is dropped.
        if result.called:
            return
        if isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(outcome)

    session: Deferred[SessionResult] = connecting.addCallbacks(connected, not_connected)
    session.addBoth(deliver)
    return result


def request_otp(
    reactor: Reactor, server: ServerEndpoint, settings: ClientSettings, transaction: str
) -> Deferred[SessionResult]:
    """Ask ``server`` for an OTP for ``transaction``; fires with a SessionResult whose answer is an OTPGrant."""
    return run_session(reactor, server, settings, messages.OTPRequest(messages.check_transaction(transaction)))


def request_otp_message(
    reactor: Reactor, server: ServerEndpoint, settings: ClientSettings, transaction: str
) -> Deferred[str]:
    """The simplest embedding: fires with the verified OTP sentence, or fails with ``AlertError``."""

    def sentence(result: SessionResult) -> str:
        assert isinstance(result.answer, messages.OTPGrant)
        return result.answer.message

    return request_otp(reactor, server, settings, transaction).addCallback(sentence)


def confirm_otp(
    reactor: Reactor, server: ServerEndpoint, settings: ClientSettings, transaction: str, code: str
) -> Deferred[SessionResult]:
    """Confirm ``code`` for ``transaction``; fires with a SessionResult whose answer is a ConfirmResult."""
    request = messages.ConfirmRequest(messages.check_transaction(transaction), messages.check_code(code))
    return run_session(reactor, server, settings, request)
