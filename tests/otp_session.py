"""One OTP session in memory, frame by frame, with an adversary's hands on the frames in flight.

``Session`` holds a sans-I/O ``ClientConnection`` and ``ServerConnection`` and, on top of each,
the OTP application logic exactly as the Twisted shells run it (``tlsotp.services.otp_client`` /
``tlsotp.services.bank_server``: request on HandshakeComplete, one request per session, grant then
close_notify, the client's ``check_grant``, the client accepting its answer only on the
server's close_notify). Between them are two FIFO queues of frames in flight (``c2s`` and
``s2c``, TCP's order) that a test may edit before delivering.

The server issues OTPs with the real OTP store (``tlsotp.otp.store``) on a SQLite file and
``StoreIssuer`` records every grant it encoded, so a test can check that what the client
accepted is byte for byte what the server issued for that client and transaction.

``Session.finish`` delivers what is left honestly; a side still waiting after that is ended the
way the shell ends it (its timeout, or the TCP close of a peer that has finished): ``abort``.
``check_outcome`` then states the invariant every session must satisfy, attacked or not.
"""

from __future__ import annotations

import contextlib
import copy
import copyreg
import dataclasses
import secrets
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from tests.vectors import fixtures
from tlsotp.alerts import Alert, AlertError
from tlsotp.handshake import (
    ALL_SUITES,
    AlertReceived,
    ApplicationData,
    ClientConfig,
    ClientConnection,
    ClientState,
    ConnectionFailed,
    Event,
    HandshakeComplete,
    PeerClosed,
    ServerConfig,
    ServerConnection,
    ServerState,
    Suite,
)
from tlsotp.handshake.frames import ContentType
from tlsotp.otp import messages, store
from tlsotp.pki.credentials import certified_name
from tlsotp.services.otp_client import check_grant

DIRECTIONS = ("c2s", "s2c")
TRANSACTION = "Rs 1,00,000 to account 0042"
CLEAR_CLOSE_NOTIFY = bytes([ContentType.alert, Alert.close_notify])


@dataclass(frozen=True)
class Issued:
    client: str
    transaction: str
    grant: bytes  # the encoded OTPGrant, as it went into the record


class StoreIssuer:
    """The server's OTP authority, synchronously: ``tlsotp.otp.store.issue`` on a SQLite file.

    Shared, not copied, by ``snapshot``: what a server issued stays issued whichever branch
    of an explored session issued it.
    """

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path)
        store.configure_connection(self.db)
        self.pepper = secrets.token_bytes(store.PEPPER_BYTES)
        self.issued: list[Issued] = []

    def issue(self, client: str, transaction: str) -> messages.OTPGrant:
        with self.db:
            issued = store.issue(
                self.db.cursor(), pepper=self.pepper, client=client, transaction=transaction,
                digits=6, ttl_seconds=300, now=int(time.time()),
            )
        grant = messages.OTPGrant(
            issued.transaction_id, transaction, issued.code, issued.expires_at,
            messages.otp_message(transaction, issued.code),
        )
        self.issued.append(Issued(client, transaction, messages.encode(grant)))
        return grant

    def close(self) -> None:
        self.db.close()

    def __deepcopy__(self, memo: dict[int, Any]) -> StoreIssuer:
        return self


@dataclass
class Side:
    """What the shell tracks for one side: how it ended, and everything it was told."""

    events: list[Event] = field(default_factory=list)
    ended: str | None = None  # "closed" (close_notify either way) or "failed"
    timed_out: bool = False
    last_frame: bytes = b""

    def alerted(self) -> bool:
        """It ended with an alert: one it sent (ConnectionFailed) or one it received."""
        return any(isinstance(e, (ConnectionFailed, AlertReceived)) for e in self.events)

    def closed_in_clear(self) -> bool:
        """It ended on an unprotected close_notify: one sent before the sender's Finished,
        which anybody on the path can send, exactly like closing TCP."""
        return self.ended == "closed" and self.last_frame == CLEAR_CLOSE_NOTIFY


class ClientApp(Side):
    """``tlsotp.services.otp_client.OTPClientProtocol``'s logic for an OTPRequest."""

    def __init__(self, connection: ClientConnection, request: messages.OTPRequest) -> None:
        super().__init__()
        self.connection = connection
        self.request = request
        self.answer: messages.OTPGrant | None = None
        self.accepted: messages.OTPGrant | None = None  # the answer, once the server closed cleanly

    def handle(self, events: list[Event]) -> None:
        for event in events:
            if self.ended:
                return
            self.events.append(event)
            if isinstance(event, HandshakeComplete):
                self.connection.send_application_data(messages.encode(self.request))
            elif isinstance(event, ApplicationData):
                self._answer(event.data)
            elif isinstance(event, PeerClosed):
                self.ended = "closed"
                self.accepted = self.answer  # None: "the server closed without answering", a failure
            else:
                self.ended = "failed"

    def _answer(self, data: bytes) -> None:
        if self.answer is not None:
            self.abort(Alert.unexpected_message, "the server sent more than one answer")
            return
        try:
            answer = messages.decode(data)
            if not isinstance(answer, messages.OTPGrant):
                raise AlertError(Alert.unexpected_message, f"the server answered with {type(answer).__name__}")
            check_grant(answer, self.request, time.time())
        except AlertError as exc:
            self.abort(exc.alert, exc.detail)
            return
        self.answer = answer

    def abort(self, alert: Alert, detail: str) -> None:
        self.handle(self.connection.abort(alert, detail))
        self.ended = self.ended or "failed"


class ServerApp(Side):
    """``tlsotp.services.bank_server.OTPServerProtocol``'s logic, with a synchronous authority."""

    def __init__(self, connection: ServerConnection, issuer: StoreIssuer) -> None:
        super().__init__()
        self.connection = connection
        self.issuer = issuer
        self.client_name: str | None = None
        self.request_seen = False
        self.granted: bytes | None = None

    def handle(self, events: list[Event]) -> None:
        for event in events:
            if self.ended:
                return
            self.events.append(event)
            if isinstance(event, HandshakeComplete):
                try:
                    self.client_name = certified_name(event.peer_chain[0])
                except AlertError as exc:
                    self.abort(exc.alert, exc.detail)
            elif isinstance(event, ApplicationData):
                self._request(event.data)
            elif isinstance(event, PeerClosed):
                self.ended = "closed"
            else:
                self.ended = "failed"

    def _request(self, data: bytes) -> None:
        if self.request_seen:
            self.abort(Alert.unexpected_message, "one request per session")
            return
        self.request_seen = True
        try:
            request = messages.decode(data)
        except AlertError as exc:
            self.abort(exc.alert, exc.detail)
            return
        if not isinstance(request, messages.OTPRequest):
            self.abort(Alert.unexpected_message, f"this test's client does not send {type(request).__name__}")
            return
        assert self.client_name is not None
        grant = self.issuer.issue(self.client_name, request.transaction)
        self.granted = messages.encode(grant)
        self.connection.send_application_data(self.granted)
        self.connection.close()
        self.ended = "closed"

    def abort(self, alert: Alert, detail: str) -> None:
        self.handle(self.connection.abort(alert, detail))
        self.ended = self.ended or "failed"


class Session:
    def __init__(self, client_config: ClientConfig, server_config: ServerConfig, issuer: StoreIssuer,
                 transaction: str = TRANSACTION) -> None:
        self.client = ClientApp(ClientConnection(client_config), messages.OTPRequest(transaction))
        self.server = ServerApp(ServerConnection(server_config), issuer)
        self.issuer = issuer
        self.transaction = transaction
        self.queues: dict[str, list[bytes]] = {"c2s": [], "s2c": []}
        self.client.connection.initiate()
        self.collect()

    def collect(self) -> None:
        self.queues["c2s"] += self.client.connection.frames_to_send()
        self.queues["s2c"] += self.server.connection.frames_to_send()

    def receive(self, direction: str, frame: bytes) -> None:
        """``frame`` arrives at the receiving side of ``direction`` (from wherever it came)."""
        receiver: ClientApp | ServerApp = self.server if direction == "c2s" else self.client
        if not receiver.ended:  # the shell has closed the socket: nothing reaches the machine
            receiver.last_frame = frame
            receiver.handle(receiver.connection.receive_frame(frame))
        self.collect()

    def deliver(self, direction: str) -> None:
        self.receive(direction, self.queues[direction].pop(0))

    def next_direction(self) -> str | None:
        """The honest network's order: the client's queue first, then the server's."""
        return next((d for d in DIRECTIONS if self.queues[d]), None)

    def pump(self) -> None:
        while (direction := self.next_direction()) is not None:
            self.deliver(direction)

    def finish(self) -> None:
        """Deliver everything, then end each side still waiting as its shell would."""
        self.pump()
        for side in (self.client, self.server):
            if not side.ended:
                side.timed_out = True
                side.abort(Alert.handshake_failure, "timed out waiting for the peer")
                self.collect()
                self.pump()

    @property
    def over(self) -> bool:
        return bool(self.client.ended and self.server.ended)


def check_accepted_was_issued(session: Session) -> None:
    """The client never accepts an OTP the server did not issue for that client and transaction."""
    accepted = session.client.accepted
    if accepted is None:
        return
    wanted = Issued(fixtures.CLIENT_NAME, session.transaction, messages.encode(accepted))
    assert wanted in session.issuer.issued, (accepted, session.issuer.issued)


def check_outcome(session: Session) -> str:
    """The invariant at the end of every session: "completed" or "failed", nothing in between.

    Completed: the client accepted an OTP; both machines closed cleanly on the same suite with
    byte-identical transcripts (so the same keys: each side opened the other's records), and
    the OTP is byte for byte the grant this session's server issued for this client and
    transaction.

    Failed: the client accepted nothing and its machine is FAILED, having sent or received an
    alert (or been aborted by its shell's timeout); the server is FAILED too, unless it had
    already sent its grant and close_notify: then its half of the session was complete by its
    own rules and only the client's refusal (or timeout) says otherwise, which the server can
    never learn (the last message of any protocol can be suppressed). Either side may instead
    have ended on an unprotected close_notify (before the other side's Finished anybody can
    send one, as anybody can close TCP): no OTP either, and the client's shell reports "the
    server closed without answering".
    """
    assert session.over, (session.client.ended, session.server.ended)
    client, server = session.client, session.server
    check_accepted_was_issued(session)
    if client.accepted is not None:
        assert client.connection.state is ClientState.CLOSED
        assert server.connection.state is ServerState.CLOSED
        assert client.connection.suite is not None and client.connection.suite == server.connection.suite
        assert client.connection._transcript.messages == server.connection._transcript.messages
        assert messages.encode(client.accepted) == server.granted
        return "completed"
    if not client.closed_in_clear():
        assert client.connection.state is ClientState.FAILED, client.events
        assert client.alerted(), client.events
    if server.connection.state is ServerState.CLOSED:
        assert server.granted is not None or server.closed_in_clear(), server.events
    else:
        assert server.connection.state is ServerState.FAILED, server.events
        assert server.alerted(), server.events
    return "failed"


@contextlib.contextmanager
def _aead_objects_shared() -> Iterator[None]:
    """``cryptography``'s AEAD objects cannot be copied; they are immutable, so share them."""

    def shared(cipher: object) -> tuple[Any, tuple[Any, ...]]:
        return _call, (lambda: cipher,)  # functions are copied as themselves

    saved = {cls: copyreg.dispatch_table.get(cls) for cls in (AESGCM, ChaCha20Poly1305)}
    try:
        for cls in saved:
            copyreg.dispatch_table[cls] = shared
        yield
    finally:
        for cls, reducer in saved.items():
            if reducer is None:
                del copyreg.dispatch_table[cls]
            else:
                copyreg.dispatch_table[cls] = reducer


def _call(function: Any) -> Any:
    return function()


def snapshot(session: Session) -> Session:
    """An independent copy of the whole session (both machines, both apps, frames in flight).

    The issuer is shared, and so are the configurations' immutable parts (keys, chains,
    verifiers, suites), which would otherwise be most of the copying; each copy gets its own
    random source, so every branch is as deterministic as the session it came from.
    """
    memo: dict[int, Any] = {id(suite): suite for suite in ALL_SUITES}
    for config in (session.client.connection.config, session.server.connection.config):
        for item in dataclasses.fields(config):
            if item.name != "random_bytes":
                value = getattr(config, item.name)
                memo[id(value)] = value
    with _aead_objects_shared():
        return copy.deepcopy(session, memo)


def suite_configs(suite: Suite | tuple[Suite, ...], *, server_key: str, client_key: str = "ec-p256",
                  server_suites: tuple[Suite, ...] | None = None, seed: str = "") -> tuple[ClientConfig, ServerConfig]:
    """Deterministic configurations from the vector fixtures; ``seed`` makes a session's randoms
    (hence its keys) differ from other sessions'."""
    from tests.vectors.harness import make_configs

    client_config, server_config = make_configs(
        suite, server_key=server_key, client_key=client_key, server_suites=server_suites
    )
    if seed:
        client_config = _reseeded(client_config, f"client/{seed}")
        server_config = _reseeded(server_config, f"server/{seed}")
    return client_config, server_config


def _reseeded(config: Any, label: str) -> Any:
    return dataclasses.replace(config, random_bytes=fixtures.ScriptedRandom(label))
