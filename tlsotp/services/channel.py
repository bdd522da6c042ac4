"""The Twisted shell shared by the server and the client: frames in, frames out, one timeout.

All protocol decisions are the sans-I/O connection's; this class only moves netstring payloads
(parsed by ``tlsotp.framing.NetstringDecoder``, which says which framing error it found, so that
no private hook of Twisted's ``NetstringReceiver`` is needed) between the transport and that
object, turns its events into method calls, counts bytes, and bounds every wait with
``TimeoutMixin`` (and, for the side that listens, the wait for the peer's first complete frame
with a shorter deadline of its own). A failure of any kind ends in exactly one call to
``failed`` with an ``AlertError`` (or one to ``closed_cleanly``), made only once the connection
is closed, so that the alert we queued has been written before anybody acts on the outcome
(a command that stops the reactor at once would otherwise lose it).
"""

from __future__ import annotations

import time
from typing import Any, Callable, ClassVar, Sequence, Union, cast

from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from tlsotp.alerts import Alert, AlertError
from tlsotp.framing import Frame, FrameTooLong, FramingError, NetstringDecoder, encode, netstring_size
from tlsotp.handshake import (
    MAX_FRAME,
    AlertReceived,
    ApplicationData,
    ClientConnection,
    ConnectionFailed,
    Event,
    HandshakeComplete,
    PeerClosed,
    ServerConnection,
)
from tlsotp.services.addresses import describe_address

SansIOConnection = Union[ClientConnection, ServerConnection]


def refusal_for_framing_error(error: FramingError) -> tuple[Alert, str]:
    """The alert for a netstring the shell cannot accept: ``record_overflow`` when its length
    prefix announces more than the bound (refused before any of it is buffered), ``decode_error``
    for any other malformation (no digits, a leading zero, a non-digit, a missing ``:`` or ``,``)."""
    if isinstance(error, FrameTooLong):
        return Alert.record_overflow, error.detail
    return Alert.decode_error, error.detail


def refusal_for_bad_netstring(unparsed: bytes, max_length: int) -> tuple[Alert, str]:
    """The alert for the netstring starting ``unparsed`` (``decode_error`` when it is not refused
    as too long: a caller asks only about bytes that failed)."""
    decoder = NetstringDecoder(max_length)
    decoder.receive_data(unparsed)
    error = decoder.failed
    if error is None:
        return Alert.decode_error, "malformed netstring"
    return refusal_for_framing_error(error)


class ChannelStats:
    """What a session cost on the wire: bytes (netstring framing included) and frames each way,
    and flights received (changes of direction), which is the round-trip count."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, measure_cpu: bool = True) -> None:
        self._clock = clock
        self.started = clock()
        # The process CPU clock is a costly read under load (it sums every thread's time): only
        # for sides that report it (the client's --trace), not per session on the server.
        self._measure_cpu = measure_cpu
        self.cpu_started = time.process_time() if measure_cpu else 0.0
        self.bytes_sent = self.bytes_received = 0
        self.frames_sent = self.frames_received = 0
        self.flights_received = 0
        self._last_direction = ""
        self.handshake_seconds: float | None = None
        self.handshake_cpu_seconds: float | None = None

    def sent(self, size: int) -> None:
        self.frames_sent += 1
        self.bytes_sent += netstring_size(size)
        self._last_direction = "send"

    def received(self, size: int) -> None:
        self.frames_received += 1
        self.bytes_received += netstring_size(size)
        if self._last_direction != "recv":
            self.flights_received += 1
        self._last_direction = "recv"

    def elapsed(self) -> float:
        return self._clock() - self.started

    def handshake_done(self) -> None:
        self.handshake_seconds = self.elapsed()
        if self._measure_cpu:
            self.handshake_cpu_seconds = time.process_time() - self.cpu_started


class SecureChannelProtocol(Protocol, TimeoutMixin):
    #: The largest frame accepted, read from the netstring's length prefix.
    MAX_LENGTH = MAX_FRAME
    log: ClassVar[Logger] = Logger()

    #: What the other side is, for messages: "server" or "client".
    peer_role: ClassVar[str] = "peer"

    #: Bounds the whole handshake, and then each wait for the peer's next message.
    timeout_seconds: float = 30.0

    #: When set, the peer's first complete frame must arrive this many seconds after connecting
    #: (the side that listens uses it, so that a silent connection does not hold a slot for long).
    first_message_timeout: float | None = None

    #: Whether ``stats`` times the handshake's CPU (``handshake_cpu_seconds``).
    measure_cpu: ClassVar[bool] = True

    def __init__(self) -> None:
        self.stats = ChannelStats(measure_cpu=self.measure_cpu)
        self.finished = False
        self.first_message_seen = False
        self._first_message_call: Any = None
        self._outcome: tuple[AlertError | None, bool] | None = None
        self.decoder = NetstringDecoder(self.MAX_LENGTH)
        self.connection: SansIOConnection = self.make_connection()

    # -- what subclasses provide -------------------------------------------------------------

    def make_connection(self) -> SansIOConnection:
        raise NotImplementedError

    def handshake_complete(self, event: HandshakeComplete) -> None:
        pass

    def application_data(self, data: bytes) -> None:
        raise NotImplementedError

    def failed(self, error: AlertError, *, sent: bool) -> None:
        """Called once when the session ends badly; ``sent`` says which side raised the alert."""

    def closed_cleanly(self) -> None:
        """Called once when the session ended with close_notify, sent by either side."""

    def first_message_received(self) -> None:
        """Called once, when the peer's first complete frame has arrived (before it is handled)."""

    def first_message_missed(self) -> None:
        """Called when ``first_message_timeout`` passes with no complete frame: refuse by default."""
        assert self.first_message_timeout is not None
        self.abort(
            Alert.handshake_failure, f"no complete first message within {self.first_message_timeout:g} s"
        )

    # -- moving bytes ------------------------------------------------------------------------

    @property
    def peer(self) -> str:
        return describe_address(cast(Any, self.transport).getPeer() if self.transport else None)

    def connectionMade(self) -> None:
        self.stats = ChannelStats(measure_cpu=self.measure_cpu)
        if ITCPTransport.providedBy(self.transport):
            # A flight is one write; with Nagle on, a flight written after an unacknowledged
            # one would wait for the peer's delayed ACK (up to 40 ms on Linux).
            cast(Any, self.transport).setTcpNoDelay(True)
        self.setTimeout(self.timeout_seconds)  # type: ignore[no-untyped-call]
        if self.first_message_timeout is not None:
            self._first_message_call = self.callLater(  # type: ignore[no-untyped-call]
                self.first_message_timeout, self._first_message_deadline
            )
        self.start()
        self.flush()

    def start(self) -> None:
        """Hook for the side that speaks first."""

    def dataReceived(self, data: bytes) -> None:
        if self.finished:
            return
        self.decoder.receive_data(data)
        while not self.finished:
            event = self.decoder.next_event()
            if isinstance(event, Frame):
                self.stringReceived(event.payload)
            elif isinstance(event, FramingError):
                # A bad length, a missing comma, or a length over MAX_LENGTH (refused before
                # buffering): a typed alert, not a silent drop.
                self.abort(*refusal_for_framing_error(event))
            else:
                break
        # Everything the frames of this chunk produced goes out together, in one write.
        self.flush()

    def stringReceived(self, string: bytes) -> None:
        """One frame from the peer."""
        if self.finished:
            return  # the session is decided: frames still buffered (or fed in) are ignored
        if not self.first_message_seen:
            self.first_message_seen = True
            self._cancel_first_message_deadline()
            self.first_message_received()
        self.stats.received(len(string))
        try:
            self.dispatch(self.connection.receive_frame(string))
        except Exception as exc:  # noqa: BLE001 - a bug in a subclass's handler: fail closed
            # One alert to the peer and one log line (by ``failed``), not "Unhandled Error".
            self.abort(Alert.internal_error, f"failed handling the {self.peer_role}'s message: {type(exc).__name__}: {exc}")

    def _first_message_deadline(self) -> None:
        self._first_message_call = None
        if not self.finished and not self.first_message_seen:
            self.first_message_missed()

    def _cancel_first_message_deadline(self) -> None:
        call, self._first_message_call = self._first_message_call, None
        if call is not None and call.active():
            call.cancel()

    def dispatch(self, events: Sequence[Event]) -> None:
        """Act on the core's events. Frames they queue are written by the caller's ``flush``
        (``dataReceived``, or ``finish``), so that a flight and the request or alert that a
        handler adds to it leave in one write."""
        for event in events:
            if self.finished:
                return
            if isinstance(event, HandshakeComplete):
                self.stats.handshake_done()
                self.resetTimeout()  # type: ignore[no-untyped-call]
                self.handshake_complete(event)
            elif isinstance(event, ApplicationData):
                self.resetTimeout()  # type: ignore[no-untyped-call]
                self.application_data(event.data)
            elif isinstance(event, ConnectionFailed):
                self.finish(AlertError(event.alert, event.detail), sent=True)
            elif isinstance(event, AlertReceived):
                self.finish(AlertError(event.alert, f"the {self.peer_role} refused the session"), sent=False)
            elif isinstance(event, PeerClosed):
                self.finish(None, sent=False)

    def flush(self) -> None:
        """Write every frame the core has queued, as netstrings, in one ``transport.write``."""
        if self.transport is None:
            return
        frames = self.connection.frames_to_send()
        if not frames:
            return
        for frame in frames:
            self.stats.sent(len(frame))
        cast(Any, self.transport).write(b"".join(encode(frame) for frame in frames))

    def abort(self, alert: Alert, detail: str) -> None:
        """A local refusal: queue the alert, send it, and close."""
        if self.finished:
            return
        self.dispatch(self.connection.abort(alert, detail))
        if not self.finished:  # the connection was already terminal and queued nothing
            self.finish(AlertError(alert, detail), sent=True)

    def close(self) -> None:
        """End a good session with close_notify."""
        if self.finished:
            return
        self.connection.close()
        self.flush()
        self.finish(None, sent=True)

    def finish(self, error: AlertError | None, *, sent: bool) -> None:
        """Decide the outcome, flush, close; it is reported from ``connectionLost``."""
        if self.finished:
            return
        self.finished = True
        self._outcome = (error, sent)
        self.setTimeout(None)  # type: ignore[no-untyped-call]
        self._cancel_first_message_deadline()
        self.flush()
        if self.transport is not None:
            cast(Any, self.transport).loseConnection()

    # -- the ways a session ends without the sans-I/O core deciding ---------------------------

    def timeoutConnection(self) -> None:
        self.abort(Alert.handshake_failure, f"timed out after {self.timeout_seconds:g} s waiting for the peer")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.setTimeout(None)  # type: ignore[no-untyped-call]
        self._cancel_first_message_deadline()
        if not self.finished:
            self.finished = True
            # The peer closed TCP without an alert: a truncation, as TLS would call it.
            alert = Alert.unexpected_message if self.connection.handshake_complete else Alert.handshake_failure
            detail = f"connection closed by the peer without an alert ({reason.getErrorMessage()})"
            self._outcome = (AlertError(alert, detail), False)
        outcome, self._outcome = self._outcome, None
        if outcome is None:
            return  # already reported
        error, sent = outcome
        if error is None:
            self.closed_cleanly()
        else:
            self.failed(error, sent=sent)
