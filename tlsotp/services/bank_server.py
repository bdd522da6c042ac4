"""The bank server's protocol and factory: handshake, then one OTP request per session.

The factory holds what may change while the daemon runs (credentials after renewal, the CRL
after a refresh) so each new connection is verified with the current ones. The ServerConfig and
its PeerVerifier are built once per generation (assigning ``identity`` or ``crl`` starts a new
one) and shared by that generation's connections. It also holds the
connection slots (``tlsotp.services.connection_slots``): a connection that has not sent its ClientHello
gives way to a newcomer when the server is full, and one refused because every slot holds a
client that has spoken gets an ``internal_error`` alert rather than a silent close.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, Callable, Collection, Protocol, Sequence

from cryptography import x509
from twisted.internet.defer import Deferred
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from tlsotp.alerts import Alert, AlertError
from tlsotp.handshake import DEFAULT_SUITES, HandshakeComplete, ServerConfig, ServerConnection, Suite, TraceRecord
from tlsotp.otp import messages
from tlsotp.otp.store import Confirmation, IssuedOTP
from tlsotp.pki.credentials import leaf_name
from tlsotp.pki.keys import PrivateKey
from tlsotp.pki.names import check_dns_name
from tlsotp.pki.roles import Role
from tlsotp.pki.verify import PeerVerifier
from tlsotp.services.channel import SansIOConnection, SecureChannelProtocol
from tlsotp.services.connection_slots import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PER_ADDRESS,
    ConnectionTracker,
    SlotKeeper,
    SlottedFactory,
)
from tlsotp.services.events import BankEvents
from tlsotp.services.otp_backends import OTPStore
from tlsotp.services.postgres_pool import StoreUnavailable

log = Logger()


@dataclass
class ServerIdentity:
    key: PrivateKey
    chain: Sequence[x509.Certificate]
    root: x509.Certificate


class SessionOptions(Protocol):
    """The session settings a bank server's factory is made from: the daemon's
    ``BankServerSettings`` or a worker's ``WorkerConfig`` (``OTPServerFactory.from_options``)."""

    @property
    def allowed_clients(self) -> Collection[str] | None: ...
    @property
    def timeout(self) -> float: ...
    @property
    def first_message_timeout(self) -> float | None: ...
    @property
    def log_transactions(self) -> bool: ...
    @property
    def max_connections(self) -> int: ...
    @property
    def max_per_address(self) -> int: ...


class OTPServerFactory(SlottedFactory["OTPServerProtocol"]):
    noisy = False  # one line per session is logged by the protocol instead

    @classmethod
    def from_options(
        cls,
        identity: ServerIdentity,
        authority: OTPStore,
        suites: Sequence[Suite],
        crl: x509.CertificateRevocationList,
        options: SessionOptions,
        *,
        events: BankEvents | None,
        connections: ConnectionTracker,
    ) -> OTPServerFactory:
        """The factory the daemon and each of its workers serve with: one place, so that a
        setting reaches both."""
        return cls(
            identity, authority, suites=suites, allowed_clients=options.allowed_clients, crl=crl,
            timeout_seconds=options.timeout, first_message_timeout=options.first_message_timeout,
            log_transactions=options.log_transactions, max_connections=options.max_connections,
            max_per_address=options.max_per_address, events=events, connections=connections,
        )

    def __init__(
        self,
        identity: ServerIdentity,
        authority: OTPStore,
        *,
        suites: Sequence[Suite] = DEFAULT_SUITES,
        allowed_clients: Collection[str] | None = None,
        crl: x509.CertificateRevocationList | None = None,
        timeout_seconds: float = 30.0,
        first_message_timeout: float | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_per_address: int = DEFAULT_MAX_PER_ADDRESS,
        call_later: Callable[..., Any] | None = None,
        observer: Callable[[TraceRecord], None] | None = None,
        events: BankEvents | None = None,
        log_transactions: bool = False,
        connections: ConnectionTracker | None = None,
    ) -> None:
        """``first_message_timeout`` bounds the wait for the ClientHello (None: only
        ``timeout_seconds`` applies); ``call_later`` is a test clock's, else the reactor's;
        ``events`` hears of each session (``--metrics``); ``log_transactions``: also log each
        transaction's text (personal data: off by default); ``connections`` is told of every
        connection opened and ended (the daemon's drain at a stop)."""
        self.log_transactions = log_transactions
        self._config: ServerConfig | None = None
        self._config_key: tuple[object, ...] = ()
        self.identity = identity
        self.authority = authority
        self.suites = tuple(suites)
        # Checked here, once, rather than by the verifier built for each connection.
        self.allowed_clients = None if allowed_clients is None else frozenset(map(check_dns_name, allowed_clients))
        self.crl = crl
        self.timeout_seconds = timeout_seconds
        self.first_message_timeout = first_message_timeout
        self.max_connections = max_connections
        self.call_later = call_later
        self.slots = SlotKeeper(
            max_connections=max_connections, max_per_address=max_per_address, call_later=call_later, log=log
        )
        self.observer = observer
        self.open_connections = 0
        self.sessions_completed = 0
        self.events = events or BankEvents()
        self.connections = connections

    @property
    def identity(self) -> ServerIdentity:
        return self._identity

    @identity.setter
    def identity(self, identity: ServerIdentity) -> None:
        """New credentials (a renewal): the next connection gets a new configuration."""
        self._identity = identity
        self._config = None

    @property
    def crl(self) -> x509.CertificateRevocationList | None:
        return self._crl

    @crl.setter
    def crl(self, crl: x509.CertificateRevocationList | None) -> None:
        """A refreshed CRL: checked (signature) once by the next generation's verifier."""
        self._crl = crl
        self._config = None

    def server_config(self) -> ServerConfig:
        """This generation's configuration, built on first use after a change."""
        if self._config is None or self._config_key != (self.suites, self.allowed_clients, self.observer):
            verifier = PeerVerifier(
                self.identity.root, Role.CLIENT, expected_names=self.allowed_clients, crl=self.crl
            )
            self._config = ServerConfig(
                certificate_chain=tuple(self.identity.chain),
                private_key=self.identity.key,
                validate_peer=verifier,
                suites=self.suites,
                observer=self.observer,
            )
            self._config_key = (self.suites, self.allowed_clients, self.observer)
        return self._config

    def make_protocol(self) -> OTPServerProtocol:
        return OTPServerProtocol(self)


class OTPServerProtocol(SecureChannelProtocol):
    peer_role = "client"
    measure_cpu = False  # nothing on the server reads it; the read cost ~20% of a profile

    def __init__(self, factory: OTPServerFactory) -> None:
        self.server = factory
        self.timeout_seconds = factory.timeout_seconds
        self.first_message_timeout = factory.first_message_timeout
        self.client_name: str | None = None
        self.suite_name = ""
        self.request_seen = False
        self.awaiting_store = False
        #: No slot was free: refuse at once. ``quiet``: the slot keeper counts how this one ended,
        #: so that a flood is one line per interval in the log, not one per connection.
        self.busy = False
        self.quiet = False
        #: How the session ended, for ``events``: (outcome, alert).
        self.outcome = ("closed", "none")
        super().__init__()

    def make_connection(self) -> SansIOConnection:
        return ServerConnection(self.server.server_config())

    def connectionMade(self) -> None:
        if self.server.connections is not None:
            self.server.connections.opened(self)
        self.server.open_connections += 1
        super().connectionMade()
        if self.busy:
            self.quiet = True
            self.abort(Alert.internal_error, "the server is at its connection limit")

    def first_message_received(self) -> None:
        self.server.slots.spoke(self)

    def first_message_missed(self) -> None:
        self.quiet = True
        self.server.slots.event("silent", f"{self.peer}: closed, no complete first message in time")
        super().first_message_missed()

    def evict(self) -> None:
        """Called by the slot keeper: give way to a newcomer (this one has not spoken yet)."""
        self.quiet = True
        self.abort(Alert.handshake_failure, "closed to make room: no complete first message while the server was full")

    def finish(self, error: AlertError | None, *, sent: bool) -> None:
        super().finish(error, sent=sent)
        self.server.slots.release(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.server.connections is not None:
            self.server.connections.closed(self)  # first: a drain waiting for it goes on at once, as before
        self.server.open_connections -= 1
        self.server.slots.release(self)
        if not self.finished and not self.first_message_seen:
            # Closed before sending anything (a probe, or a flood letting go): counted, not logged each.
            self.quiet = True
            self.server.slots.event("gone", f"{self.peer}: closed by the peer before sending anything")
        super().connectionLost(reason)
        self.server.events.session_ended(*self.outcome, self.stats.elapsed())

    def handshake_complete(self, event: HandshakeComplete) -> None:
        if self.stats.handshake_seconds is not None:
            self.server.events.handshake_done(self.stats.handshake_seconds)
        try:
            self.client_name = leaf_name(event.peer_chain)
        except AlertError as exc:
            self.abort(exc.alert, exc.detail)
            return
        # Not logged here: the session's one line (the grant, the confirmation, or how it
        # ended) names the client and the suite.
        self.suite_name = event.suite.name

    def application_data(self, data: bytes) -> None:
        if self.request_seen:
            self.abort(Alert.unexpected_message, "one request per session")
            return
        self.request_seen = True
        # Hold what the core queued (our Finished) until the answer joins it: the server's
        # second flight is one write even though the OTP store answers asynchronously.
        self.awaiting_store = True
        try:
            request = messages.decode(data)
        except AlertError as exc:
            self.abort(exc.alert, exc.detail)
            return
        assert self.client_name is not None
        d: Deferred[None]
        if isinstance(request, messages.OTPRequest):
            d = self.server.authority.issue(self.client_name, request.transaction).addCallback(
                self._send_grant, request.transaction
            )
        elif isinstance(request, messages.ConfirmRequest):
            d = self.server.authority.confirm(self.client_name, request.transaction, request.code).addCallback(
                self._send_confirmation, request.transaction
            )
        else:
            self.abort(Alert.unexpected_message, f"a client does not send {type(request).__name__}")
            return
        d.addErrback(self._internal_error)

    def flush(self) -> None:
        # Held only while the store decides; once the session ends (answered, aborted, timed
        # out: the core is then closed), everything queued leaves together.
        if self.awaiting_store and not self.connection.closed:
            return
        super().flush()

    def _send_grant(self, result: tuple[IssuedOTP, str], transaction: str) -> None:
        issued, sentence = result
        if self.finished:
            return
        grant = messages.OTPGrant(issued.transaction_id, transaction, issued.code, issued.expires_at, sentence)
        self.connection.send_application_data(messages.encode(grant))
        self.outcome = ("issued", "none")
        self.server.events.otp_issued()
        # The code itself is a secret and the transaction text is personal data (an amount, a
        # payee): neither is logged. The transaction id (random, also in the grant) correlates.
        log.info(
            "{peer}: issued an OTP to {client} for transaction {transaction_id}, valid until {expires}, suite {suite}"
            + (": {transaction!r}" if self.server.log_transactions else ""),
            peer=self.peer, client=self.client_name, suite=self.suite_name, transaction_id=issued.transaction_id.hex()[:16],
            expires=datetime.datetime.fromtimestamp(issued.expires_at, datetime.timezone.utc).isoformat(),
            **self._transaction_field(transaction),
        )
        self.server.sessions_completed += 1
        self.close()

    def _send_confirmation(self, confirmation: Confirmation, transaction: str) -> None:
        if self.finished:
            return
        result = messages.ConfirmResult(confirmation.status, confirmation.attempts_left)
        self.connection.send_application_data(messages.encode(result))
        self.outcome = ("confirmed", "none")
        self.server.events.confirmation(confirmation.status.name)
        log.info(  # without the transaction text, personal data (see _send_grant)
            "{peer}: confirmation from {client}: {status}, suite {suite}"
            + (" for {transaction!r}" if self.server.log_transactions else ""),
            peer=self.peer, client=self.client_name, status=confirmation.status.name, suite=self.suite_name,
            **self._transaction_field(transaction),
        )
        self.server.sessions_completed += 1
        self.close()

    def _transaction_field(self, transaction: str) -> dict[str, str]:
        """The transaction text as a log field, only with ``--log-transactions`` (never the code)."""
        return {"transaction": transaction} if self.server.log_transactions else {}

    def _internal_error(self, failure: Failure) -> None:
        if isinstance(failure.value, AlertError):  # a refusal by the OTP rules (a locked transaction)
            self.server.events.otp_refused("locked")
            self.abort(failure.value.alert, failure.value.detail)
            return
        if isinstance(failure.value, StoreUnavailable):  # the store logs an outage once, not per session
            self.quiet = True
            self.abort(Alert.internal_error, "the OTP store is unreachable")
            return
        log.error("{peer}: OTP store failed: {error}", peer=self.peer, error=failure.getErrorMessage())
        self.server.events.otp_refused("store_failed")
        self.abort(Alert.internal_error, "the OTP store failed")

    def failed(self, error: AlertError, *, sent: bool) -> None:
        self.outcome = ("refused" if sent else "peer_alert", error.alert.name)
        if self.quiet:
            return  # counted by the slot keeper, which logs once per interval
        who = "refused" if sent else "peer alert"
        if self.client_name is None:
            log.warn("{peer}: session ended, {who}: {error}", peer=self.peer, who=who, error=str(error))
        else:  # after the handshake: the line also says who the client was
            log.warn(
                "{peer}: session ended, {who}: {error} (client {client}, suite {suite})",
                peer=self.peer, who=who, error=str(error), client=self.client_name, suite=self.suite_name,
            )

    def closed_cleanly(self) -> None:
        if self.client_name is not None and self.outcome == ("closed", "none"):
            # Handshake done, no request: still one line for the session.
            log.info(
                "{peer}: client {client} closed the session after the handshake ({suite}), no request",
                peer=self.peer, client=self.client_name, suite=self.suite_name,
            )
